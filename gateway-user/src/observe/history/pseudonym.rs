//! The keyed hash that stands for a device name in a pseudonymised history and in `/metrics`.

use std::path::Path;

use crate::BadInput;

use super::KEY_FILE;

/// The keyed hash that stands for a device name (BLAKE3 in keyed mode, 64 bits shown).
#[derive(Clone)]
pub struct Pseudonym {
    key: [u8; 32],
}

impl std::fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonym(..)")
    }
}

impl Pseudonym {
    /// The key in `state_dir`, created (mode 0600) if there is none. A key file that others can
    /// read is refused: it would let them reverse the pseudonyms of known device names.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(KEY_FILE);
        let bytes = crate::secret::load_or_create(&path, || crate::secret::random_bytes(32))?;
        Self::from_bytes(&path, &bytes)
    }

    /// The key at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::from_bytes(path, &crate::secret::read_private(path)?)
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> anyhow::Result<Self> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            BadInput(format!(
                "{}: {} bytes, expected a 32-byte key",
                path.display(),
                bytes.len()
            ))
        })?;
        Ok(Self { key })
    }

    /// The pseudonym of device `name`: `p-` and 16 hex digits.
    pub fn of(&self, name: &str) -> String {
        let h = blake3::keyed_hash(&self.key, name.as_bytes());
        let mut out = String::from("p-");
        for b in &h.as_bytes()[..8] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}
