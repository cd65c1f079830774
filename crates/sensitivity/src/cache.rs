//! The on-disk sweep cache: one JSON line per measured (site, bits), in a file named by a
//! fingerprint of everything the numbers depend on, so a rerun skips what is done and a
//! changed input starts a fresh file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use mixq_core::{Error, Result, SiteBits, SiteId};

use crate::Record;

/// FNV-1a 64 over the parts (each length-prefixed, so `["ab", "c"] != ["a", "bc"]`), as 16
/// hex digits. Stable across Rust versions and platforms, unlike `DefaultHasher`.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for part in parts {
        eat(&(part.len() as u64).to_le_bytes());
        eat(part);
    }
    format!("{h:016x}")
}

/// Measured points of one fingerprint, appended as they come.
#[derive(Debug)]
pub struct SweepCache {
    path: PathBuf,
    done: BTreeMap<(SiteId, SiteBits), Record>,
}

impl SweepCache {
    /// Opens (or starts) `<dir>/<fingerprint>.jsonl`. A torn last line (a crash mid-write) is
    /// dropped; any other unreadable line is an error naming the file and line.
    pub fn open(dir: impl AsRef<Path>, fingerprint: &str) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("{fingerprint}.jsonl"));
        let mut done = BTreeMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<Record>(line) {
                    // Written before the cosine or relative-MSE damage existed: measured again.
                    Ok(r) if r.damage.cosine.is_nan() || r.damage.rel_mse.is_nan() => {}
                    Ok(r) => {
                        done.insert((r.site.clone(), r.bits), r);
                    }
                    Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                    Err(e) => {
                        return Err(Error::parse(&path, format!("line {}: {e}", i + 1)));
                    }
                }
            }
        }
        Ok(SweepCache { path, done })
    }

    /// A cache that keeps nothing on disk.
    pub fn in_memory() -> Self {
        SweepCache {
            path: PathBuf::new(),
            done: BTreeMap::new(),
        }
    }

    /// The file the points are appended to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The point measured for `(site, bits)`, if any.
    pub fn get(&self, site: &SiteId, bits: SiteBits) -> Option<&Record> {
        self.done.get(&(site.clone(), bits))
    }

    /// Points measured so far.
    pub fn len(&self) -> usize {
        self.done.len()
    }

    /// Whether none was measured yet.
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// Keeps a record and appends it to the file (one line, flushed).
    pub fn add(&mut self, record: Record) -> Result<()> {
        if !self.path.as_os_str().is_empty() {
            let mut line = serde_json::to_string(&record)
                .map_err(|e| Error::invalid("record", &record.site, e.to_string()))?;
            line.push('\n');
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| Error::io(&self.path, e))?;
            file.write_all(line.as_bytes())
                .and_then(|_| file.flush())
                .map_err(|e| Error::io(&self.path, e))?;
        }
        self.done.insert((record.site.clone(), record.bits), record);
        Ok(())
    }

    /// Every point, in the order measured.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.done.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Damage;
    use mixq_core::BitWidth;

    #[test]
    fn points_from_before_the_cosine_damage_are_measured_again() {
        let dir = tempfile::tempdir().unwrap();
        let bits = SiteBits {
            w_bits: BitWidth::new(4).unwrap(),
            a_bits: BitWidth::new(4).unwrap(),
        };
        let mut cache = SweepCache::open(dir.path(), "f").unwrap();
        let new = Record {
            site: SiteId::new("a"),
            bits,
            damage: Damage {
                kl: 0.1,
                ce: 0.2,
                top1: 0.0,
                cosine: 0.05,
                rel_mse: 0.01,
            },
        };
        cache.add(new.clone()).unwrap();
        // A line as an older mixq wrote it: no cosine.
        let old = serde_json::to_string(&new)
            .unwrap()
            .replace("\"a\"", "\"b\"")
            .replace(",\"cosine\":0.05", "");
        assert!(!old.contains("cosine"), "{old}");
        let path = cache.path().to_path_buf();
        let text = std::fs::read_to_string(&path).unwrap() + &old + "\n";
        std::fs::write(&path, text).unwrap();
        let reopened = SweepCache::open(dir.path(), "f").unwrap();
        assert_eq!(reopened.get(&SiteId::new("a"), bits), Some(&new));
        assert!(reopened.get(&SiteId::new("b"), bits).is_none());
    }
}
