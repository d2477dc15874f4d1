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

/// A buffered writer to `path` through [`temp_path`]`(path)`.
pub struct AtomicFile {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile> {
        let path = path.as_ref().to_path_buf();
        let tmp = temp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&path, e))?;
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
            return Err(Error::io(&self.path, e));
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
