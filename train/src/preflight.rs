//! Checks before the first step, so that a run fails in seconds rather than at its first
//! checkpoint: the output directory is writable, and its file system has room for the
//! checkpoints and the export.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Creates `dir` if needed and proves it writable by writing, syncing and deleting a probe
/// file.
///
/// # Errors
/// A clear message naming `dir` when it cannot be created or written.
pub fn check_writable(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("the output directory {} cannot be created", dir.display()))?;
    let probe = dir.join(".write-probe");
    let written = fs::File::create(&probe)
        .and_then(|mut f| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_all()));
    let _ = fs::remove_file(&probe);
    written.with_context(|| format!("the output directory {} is not writable", dir.display()))
}

/// Bytes free for an unprivileged user on the file system of `dir`; `None` where the
/// platform gives no answer.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid NUL-terminated string and `stat` a writable statvfs.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Disk a run needs: `keep + 1` checkpoints (one being written while `keep` exist), each
/// the f32 weights plus two f32 moments, and the f32 export.
pub fn bytes_needed(num_params: usize, keep: usize) -> u64 {
    let weights = num_params as u64 * 4;
    (keep as u64 + 1) * 3 * weights + weights
}

/// Fails when the file system of `dir` has less than `needed` bytes free.
///
/// # Errors
/// A message with both sizes, naming `dir`.
pub fn check_space(dir: &Path, needed: u64) -> Result<()> {
    if let Some(free) = free_bytes(dir) {
        if free < needed {
            bail!(
                "{} has {:.2} GB free, but this run's checkpoints and export need {:.2} GB \
                 (lower run.keep_checkpoints or pick another run.output_dir)",
                dir.display(),
                free as f64 / 1e9,
                needed as f64 / 1e9
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_dir_passes_and_an_unwritable_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        check_writable(&dir).unwrap();
        assert!(free_bytes(&dir).unwrap() > 0);
        // A path below a regular file can never be created, even as root.
        let file = dir.join("a-file");
        fs::write(&file, "x").unwrap();
        let err = check_writable(&file.join("out")).unwrap_err();
        assert!(err.to_string().contains("cannot be created"), "{err}");
        let err = check_space(&dir, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("GB free"), "{err}");
        assert_eq!(bytes_needed(1000, 2), 3 * 3 * 4000 + 4000);
    }
}
