//! Files only their owner may read (the pseudonymisation key, the API token), and random bytes.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::Context as _;

use crate::BadInput;

/// `n` bytes from the kernel's random source.
pub fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b)
}

/// The contents of `path`, which must be readable by its owner only (mode 0600 or stricter).
pub fn read_private(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(BadInput(format!(
            "{}: mode {mode:o}, expected 0600 (a secret must be readable by its owner only)",
            path.display()
        ))
        .into());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Creates `dir` (and its parents), mode 0700, if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.as_os_str().is_empty() && !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// Creates `path` with `contents`, mode 0600 (and its directory, mode 0700, if missing). Fails
/// if the file exists.
pub fn create_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// The secret in `path`, created from `make()` if the file does not exist.
pub fn load_or_create(
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    if !path.exists() {
        let bytes = make()?;
        create_private(path, &bytes)?;
        return Ok(bytes);
    }
    read_private(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_created_0600_and_refused_when_readable_by_others() {
        let dir = std::env::temp_dir().join(format!("gw-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = dir.join("sub").join("s");
        let a = load_or_create(&f, || Ok(b"one".to_vec())).expect("create");
        let b = load_or_create(&f, || Ok(b"two".to_vec())).expect("read");
        assert_eq!((a.as_slice(), b.as_slice()), (&b"one"[..], &b"one"[..]));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!((mode(&f), mode(&dir.join("sub"))), (0o600, 0o700));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = read_private(&f).expect_err("group-readable");
        assert!(format!("{e}").contains("mode 640, expected 0600"), "{e}");
        assert_eq!(random_bytes(32).expect("random").len(), 32);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
