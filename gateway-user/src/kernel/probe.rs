//! What the filter needs of the running kernel, probed before it is loaded: a kernel without one
//! of them is refused with one line naming the kernel and the feature, instead of a verifier log.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

use crate::errors::BadInput;

/// The oldest kernel series the filter is tested on (`cargo xtask test` boots it).
pub const SUPPORTED: &str = "6.1 LTS or newer is supported";

/// Every BPF helper the filter's programs call, with its name and the first kernel that had it
/// (for XDP programs). A unit test checks the object calls no other.
pub const HELPERS: &[(BpfHelper, &str, &str)] = &[
    (
        BpfHelper::BPF_FUNC_map_lookup_elem,
        "bpf_map_lookup_elem",
        "3.19",
    ),
    (
        BpfHelper::BPF_FUNC_map_update_elem,
        "bpf_map_update_elem",
        "3.19",
    ),
    (
        BpfHelper::BPF_FUNC_map_delete_elem,
        "bpf_map_delete_elem",
        "3.19",
    ),
    (BpfHelper::BPF_FUNC_tail_call, "bpf_tail_call", "4.2"),
    (BpfHelper::BPF_FUNC_csum_diff, "bpf_csum_diff", "4.6"),
    (
        BpfHelper::BPF_FUNC_xdp_adjust_tail,
        "bpf_xdp_adjust_tail",
        "4.18",
    ),
    (
        BpfHelper::BPF_FUNC_ktime_get_boot_ns,
        "bpf_ktime_get_boot_ns",
        "5.8",
    ),
    (
        BpfHelper::BPF_FUNC_ringbuf_reserve,
        "bpf_ringbuf_reserve",
        "5.8",
    ),
    (
        BpfHelper::BPF_FUNC_ringbuf_submit,
        "bpf_ringbuf_submit",
        "5.8",
    ),
    (
        BpfHelper::BPF_FUNC_ringbuf_discard,
        "bpf_ringbuf_discard",
        "5.8",
    ),
    (
        BpfHelper::BPF_FUNC_ringbuf_query,
        "bpf_ringbuf_query",
        "5.8",
    ),
    (BpfHelper::BPF_FUNC_loop, "bpf_loop", "5.17"),
    (
        BpfHelper::BPF_FUNC_xdp_load_bytes,
        "bpf_xdp_load_bytes",
        "5.18",
    ),
    (
        BpfHelper::BPF_FUNC_xdp_store_bytes,
        "bpf_xdp_store_bytes",
        "5.18",
    ),
];

/// Map types the filter creates, with the first kernel that had each.
const MAPS: &[(MapType, &str, &str)] = &[
    (MapType::Array, "array maps", "3.19"),
    (MapType::PerCpuArray, "per-CPU arrays", "4.6"),
    (MapType::Hash, "hash maps", "3.19"),
    (MapType::PerCpuHash, "per-CPU hash maps", "4.6"),
    (MapType::LruHash, "LRU hash maps", "4.10"),
    (MapType::LpmTrie, "LPM tries", "4.11"),
    (MapType::ProgramArray, "program arrays", "4.2"),
    (MapType::RingBuf, "ring buffers", "5.8"),
];

/// One thing the filter needs, and whether this kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    pub what: &'static str,
    /// The first kernel version that has it.
    pub since: &'static str,
    pub present: bool,
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    // SAFETY: `uname` fills the zeroed struct; its fields are NUL-terminated.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "(unknown)".to_string();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// (major, minor) of a release such as `6.1.0-57-amd64`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `release` is at least `since` ("5.9"); unknown forms count as new enough (the other
/// probes still run).
fn at_least(release: &str, since: &str) -> bool {
    match (version(release), version(since)) {
        (Some(have), Some(need)) => have >= need,
        _ => true,
    }
}

/// Creates an array map with `BPF_F_MMAPABLE` (the domain and identity tables are mapped into
/// the daemon): true if the kernel accepts it.
fn mmapable_arrays() -> bool {
    // The head of `union bpf_attr` for BPF_MAP_CREATE; the kernel zero-fills the rest.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: BPF_F_MMAPABLE,
    };
    // SAFETY: `attr` is a valid prefix of bpf_attr, its size given; the call returns a new file
    // descriptor (closed below) or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned to us and is closed once.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

/// Every feature the filter needs, probed on this kernel, in the order they are reported. Probed
/// once per process (a probe loads a program or creates a map per feature; the kernel does not
/// change under a running process): every later filter load and report reads the first result.
pub fn features() -> &'static [Feature] {
    static PROBED: std::sync::OnceLock<Vec<Feature>> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe_all)
}

fn probe_all() -> Vec<Feature> {
    let release = release();
    let mut out = vec![
        Feature {
            what: "XDP programs",
            since: "4.8",
            present: is_program_supported(ProgramType::Xdp).unwrap_or(false),
        },
        Feature {
            what: "BTF",
            since: "5.4",
            present: Path::new("/sys/kernel/btf/vmlinux").exists(),
        },
        // No probe short of attaching one; every kernel with bpf_loop (5.17) has them.
        Feature {
            what: "XDP links",
            since: "5.9",
            present: at_least(&release, "5.9"),
        },
        Feature {
            what: "mmapable arrays",
            since: "5.5",
            present: mmapable_arrays(),
        },
    ];
    out.extend(MAPS.iter().map(|(t, what, since)| Feature {
        what,
        since,
        present: is_map_supported(*t).unwrap_or(false),
    }));
    out.extend(HELPERS.iter().map(|(h, what, since)| Feature {
        what,
        since,
        present: is_helper_supported(ProgramType::Xdp, *h).unwrap_or(false),
    }));
    out
}

/// The refusal for a kernel that lacks `f`, e.g. `kernel 5.15.0 has no bpf_loop (needs 5.17+;
/// 6.1 LTS or newer is supported)`.
pub fn refusal(release: &str, f: &Feature) -> String {
    format!(
        "kernel {release} has no {} (needs {}+; {SUPPORTED})",
        f.what, f.since
    )
}

/// Fails with the refusal (bad input: exit 2) for the first of `features` that `release` lacks.
pub fn refuse_missing(release: &str, features: &[Feature]) -> anyhow::Result<()> {
    match features.iter().find(|f| !f.present) {
        Some(f) => Err(BadInput(refusal(release, f)).into()),
        None => Ok(()),
    }
}

/// Fails with the refusal (bad input: exit 2) if this kernel lacks anything the filter needs.
pub fn require() -> anyhow::Result<()> {
    refuse_missing(&release(), features())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn versions_are_read_from_releases() {
        assert_eq!(version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(version("6.12.115+deb12-amd64"), Some((6, 12)));
        assert_eq!(version("5.15.0"), Some((5, 15)));
        assert_eq!(version("garbage"), None);
        assert!(at_least("6.1.0-57-amd64", "5.9"));
        assert!(!at_least("5.4.0-150-generic", "5.9"));
        assert!(at_least("6.10.3", "6.9"), "numeric, not textual");
    }

    #[test]
    fn the_refusal_names_kernel_and_feature() {
        let f = Feature {
            what: "bpf_loop",
            since: "5.17",
            present: false,
        };
        assert_eq!(
            refusal("5.15.0", &f),
            "kernel 5.15.0 has no bpf_loop (needs 5.17+; 6.1 LTS or newer is supported)"
        );
    }

    /// The helper table is the object's: every helper call in the filter's programs is listed
    /// (and so probed), and nothing listed is unused.
    #[test]
    fn every_helper_the_object_calls_is_probed() {
        const BPF_JMP: u8 = 0x05;
        const BPF_CALL: u8 = 0x80;
        let object = aya_obj::Object::parse(super::super::objects::FILTER_OBJECT)
            .expect("the filter object parses");
        let called: BTreeSet<i32> = object
            .functions
            .values()
            .flat_map(|f| f.instructions.iter())
            // Helper calls have source register 0 (1 is a call to a subprogram, 2 a kfunc).
            .filter(|i| i.code == BPF_JMP | BPF_CALL && i.src_reg() == 0)
            .map(|i| i.imm)
            .collect();
        let listed: BTreeSet<i32> = HELPERS.iter().map(|(h, _, _)| *h as i32).collect();
        assert_eq!(called, listed);
    }

    /// This machine runs the filter: every probe says so.
    #[test]
    fn this_kernel_has_everything() {
        let missing: Vec<&Feature> = features().iter().filter(|f| !f.present).collect();
        assert!(missing.is_empty(), "{missing:?} on {}", release());
        require().expect("nothing missing");
    }
}
