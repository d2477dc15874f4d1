//! Output files that appear whole or not at all: bytes go to a hidden temporary file beside the
//! destination, which is flushed, synced and renamed over it by [`AtomicFile::finish`]. Dropped
//! unfinished (an error, a panic), the temporary file is removed and any old file stays as it was.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary file written for `path` (for a caller that must remove it on an interrupt).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Whether `a` and `b` name the same existing file (links and hard links included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok(),
        _ => false,
    }
}

/// Refuses an output path that is, or resolves to, one of `inputs` (or is a directory): the
/// rename at the end would replace the input the run reads.
pub fn check_output(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    check_destination(out)?;
    if let Some(input) = inputs.iter().find(|i| same_file(out, i)) {
        return Err(Error::Invalid(format!("{}: refusing to write over an input of this run ({})", out.display(), input.display())));
    }
    Ok(())
}

/// The rename at the end replaces whatever `path` names: never a device, a FIFO or a folder
/// (`-o /dev/null` must not turn the device into a file).
fn check_destination(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::Invalid(format!("{}: is a directory; expected the path of a file to write", path.display()))),
        Ok(m) if !m.is_file() => Err(Error::Invalid(format!("{}: exists and is not a regular file; expected the path of a file to write", path.display()))),
        _ => Ok(()),
    }
}

/// A buffered writer to `path` through [`temp_path`]`(path)`.
pub struct AtomicFile {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    /// Starts the temporary file (removed by an interrupt, see [`crate::cli::install`]), after
    /// removing those an earlier, dead run of any dlm program left for the same destination.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile> {
        let path = path.as_ref().to_path_buf();
        check_destination(&path)?;
        remove_stale(&path);
        let tmp = temp_path(&path);
        crate::cli::register_temp(&tmp);
        let file = match File::create(&tmp) {
            Ok(f) => f,
            Err(e) => {
                crate::cli::unregister_temp(&tmp);
                return Err(Error::io(&path, e));
            }
        };
        Ok(AtomicFile { file: Some(BufWriter::with_capacity(1 << 20, file)), tmp, path })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes all of `bytes`; an error names the destination.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("file is present until finish");
        file.write_all(bytes).map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes, syncs and renames the temporary file over the destination.
    pub fn finish(mut self) -> Result<()> {
        let file = self.file.take().expect("file is present until finish");
        let done = file.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).and_then(|()| std::fs::rename(&self.tmp, &self.path));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&self.tmp);
            crate::cli::unregister_temp(&self.tmp);
            return Err(Error::io(&self.path, e));
        }
        crate::cli::unregister_temp(&self.tmp);
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
            crate::cli::unregister_temp(&self.tmp);
        }
    }
}

/// Removes `.NAME.PID.partial` files beside `path` whose process no longer runs (a run killed
/// by a signal that cannot be caught, or a power cut).
fn remove_stale(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".partial")).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !crate::cli::process_alive(pid) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
