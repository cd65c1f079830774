use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
///
/// A crash or a full disk leaves either the old file or the new one, never half of one, which
/// is what lets every mixq command promise "nothing half-written".
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid("output path", path.display(), "has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_without_leaving_temporaries() {
        let dir = std::env::temp_dir().join(format!("mixq-core-atomic-{}", std::process::id()));
        let path = dir.join("out.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.txt")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_target_is_an_error_naming_the_path() {
        let err = write_atomic("/proc/definitely/not/here.txt", b"x").unwrap_err();
        assert!(err.to_string().contains("/proc/definitely"), "{err}");
    }
}

/// A run folder, `runs/<UTC time>-<command>/`, that appears complete or not at all: files are
/// written into a hidden sibling, which [`RunDir::finish`] renames into place.
#[derive(Debug)]
pub struct RunDir {
    partial: std::path::PathBuf,
    final_path: std::path::PathBuf,
}

/// `YYYYmmdd-HHMMSS` in UTC for a Unix time (civil-from-days, proleptic Gregorian).
pub fn utc_stamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl RunDir {
    /// Starts `<root>/<stamp>-<command>`; a second run started in the same second (or one
    /// whose folder already exists) gets `-2`, `-3`, ... so runs never collide. The name is
    /// reserved by creating its hidden partial folder, which is atomic across processes.
    pub fn create(root: impl AsRef<Path>, command: &str) -> Result<Self> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let stem = format!("{}-{command}", utc_stamp(now));
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        for n in 1.. {
            let name = match n {
                1 => stem.clone(),
                _ => format!("{stem}-{n}"),
            };
            let final_path = root.join(&name);
            if final_path.exists() {
                continue;
            }
            let partial = root.join(format!(".{name}.partial"));
            match std::fs::create_dir(&partial) {
                Ok(()) => {
                    return Ok(RunDir {
                        partial,
                        final_path,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&partial, e)),
            }
        }
        unreachable!("the name counter is unbounded")
    }

    /// Writes one file of the run.
    pub fn write(&self, file: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(self.partial.join(file), bytes)
    }

    /// Where to write `file` of the run (inside the hidden folder until [`RunDir::finish`]),
    /// for writers that take a path (PNG encoders, `save` methods).
    pub fn file(&self, file: &str) -> std::path::PathBuf {
        self.partial.join(file)
    }

    /// Where the run will be once finished.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Moves the complete run into place and returns its path.
    pub fn finish(self) -> Result<std::path::PathBuf> {
        std::fs::rename(&self.partial, &self.final_path)
            .map_err(|e| Error::io(&self.final_path, e))?;
        Ok(self.final_path)
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;

    #[test]
    fn stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // 2024-02-29 12:34:56 UTC (a leap day).
        assert_eq!(utc_stamp(1_709_210_096), "20240229-123456");
    }

    #[test]
    fn run_dir_appears_only_when_finished() {
        let root = std::env::temp_dir().join(format!("mixq-core-run-{}", std::process::id()));
        let run = RunDir::create(&root, "ptq").unwrap();
        run.write("plan.toml", b"x").unwrap();
        assert!(!run.path().exists());
        let path = run.finish().unwrap();
        assert_eq!(std::fs::read(path.join("plan.toml")).unwrap(), b"x");
        assert!(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with("-ptq")
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn runs_in_the_same_second_get_distinct_folders() {
        let root = std::env::temp_dir().join(format!("mixq-core-same-{}", std::process::id()));
        // Existing runs under this second's (and the next second's) name must be kept.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for t in [now, now + 1] {
            let taken = root.join(format!("{}-lrp", utc_stamp(t)));
            std::fs::create_dir_all(&taken).unwrap();
            std::fs::write(taken.join("scores.toml"), b"old").unwrap();
        }
        let a = RunDir::create(&root, "lrp").unwrap();
        let b = RunDir::create(&root, "lrp").unwrap();
        assert_ne!(a.path(), b.path());
        a.write("scores.toml", b"a").unwrap();
        b.write("scores.toml", b"b").unwrap();
        let (pa, pb) = (a.finish().unwrap(), b.finish().unwrap());
        assert_eq!(std::fs::read(pa.join("scores.toml")).unwrap(), b"a");
        assert_eq!(std::fs::read(pb.join("scores.toml")).unwrap(), b"b");
        let old = std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| {
                std::fs::read(e.as_ref().unwrap().path().join("scores.toml")).unwrap() == b"old"
            })
            .count();
        assert_eq!(old, 2, "existing runs are untouched");
        std::fs::remove_dir_all(root).unwrap();
    }
}
