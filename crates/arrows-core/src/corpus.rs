//! The input corpus: the `.txt` files named on the command line (folders give their `.txt` files,
//! sorted), read through memory maps and addressed by one global byte offset, as if concatenated.

use crate::error::{Error, IoContext, Result};
use memmap2::Mmap;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::Xxh3;

/// Memory maps kept open at once. Each map counts against the system's limit
/// (`vm.max_map_count`, often 65,530), so a corpus of 100,000 files cannot keep one per file.
const MAX_OPEN_MAPS: usize = 1024;

#[derive(Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub size: u64,
    /// Offset of the file's first byte in the concatenated corpus.
    pub start: u64,
    /// Last modification time, nanoseconds since the Unix epoch (`None` where the system has none).
    pub modified: Option<u64>,
}

#[derive(Debug)]
pub struct Corpus {
    pub files: Vec<InputFile>,
    pub total: u64,
    /// Files mapped on first use; the oldest are closed past `MAX_OPEN_MAPS`.
    maps: Mutex<OpenMaps>,
}

#[derive(Debug, Default)]
struct OpenMaps {
    by_file: HashMap<usize, Arc<MappedFile>>,
    /// File indices in the order they were mapped.
    order: VecDeque<usize>,
}

impl Corpus {
    /// Resolve the inputs (files, or folders searched recursively for `.txt` files).
    pub fn open(inputs: &[PathBuf]) -> Result<Corpus> {
        if inputs.is_empty() {
            return Err(Error::Input("no input given: name one or more .txt files or folders".into()));
        }
        let mut paths = Vec::new();
        for input in inputs {
            let meta = std::fs::metadata(input).at(input)?;
            if meta.is_dir() {
                let before = paths.len();
                let mut seen = HashSet::new();
                collect_txt(input, &mut paths, &mut seen)?;
                if paths.len() == before {
                    return Err(Error::Input(format!("{}: folder holds no .txt file", input.display())));
                }
            } else if meta.is_file() {
                paths.push(input.clone());
            } else {
                return Err(Error::Input(format!("{}: neither a file nor a folder", input.display())));
            }
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut total = 0u64;
        // Each file once: a file given twice (itself and its folder, or through a symlink) would
        // repeat its text, and the validation split, the end of the corpus, would then be text
        // trained on.
        let mut given_as: HashMap<PathBuf, PathBuf> = HashMap::new();
        for path in paths {
            // Open now so an unreadable file is reported before any work starts.
            let f = File::open(&path).at(&path)?;
            let meta = f.metadata().at(&path)?;
            let size = meta.len();
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64);
            // The real path: the manifest identifies an input by it, so `corpus/a.txt` given from
            // one folder and `../corpus/a.txt` from another (or through a symlink) are one file.
            let real = path.canonicalize().at(&path)?;
            if let Some(first) = given_as.insert(real.clone(), path.clone()) {
                let how = if first == path { format!("as {}", path.display()) } else { format!("as {} and as {}", first.display(), path.display()) };
                return Err(Error::Input(format!(
                    "{} is among the inputs twice ({how}): its text would be in the corpus twice, and the validation split (the \
                     corpus's end) would repeat text trained on; give each file once",
                    real.display()
                )));
            }
            let path = real;
            files.push(InputFile { path, size, start: total, modified });
            total += size;
        }
        Ok(Corpus { files, total, maps: Mutex::default() })
    }

    /// The bytes of file `index`, mapped when first asked for. A map closed to stay under the
    /// limit lives on while a caller holds it.
    pub fn map(&self, index: usize) -> Result<Arc<MappedFile>> {
        let mut open = self.maps.lock().unwrap();
        if let Some(m) = open.by_file.get(&index) {
            return Ok(m.clone());
        }
        let file = &self.files[index];
        let m = Arc::new(MappedFile::open(&file.path)?);
        // Offsets in the corpus come from the sizes read at the start: a file written meanwhile
        // (a download still running) would shift every later offset, or read past its end.
        if m.bytes().len() as u64 != file.size {
            return Err(Error::Input(format!(
                "{}: changed size while being tokenized ({} bytes when the job started, now {}); tokenize files that are no longer \
                 being written",
                file.path.display(),
                file.size,
                m.bytes().len()
            )));
        }
        open.by_file.insert(index, m.clone());
        open.order.push_back(index);
        while open.order.len() > MAX_OPEN_MAPS {
            let oldest = open.order.pop_front().unwrap();
            open.by_file.remove(&oldest);
        }
        Ok(m)
    }

    /// The file holding global offset `pos` (< total) and the offset within it.
    pub fn locate(&self, pos: u64) -> (usize, u64) {
        let i = self.files.partition_point(|f| f.start + f.size <= pos);
        (i, pos - self.files[i].start)
    }
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    // A symlink loop would revisit a folder: remember each by its canonical path.
    if !seen.insert(dir.canonicalize().at(dir)?) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .at(dir)?;
    entries.sort();
    for path in entries {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling symlink is not input
        };
        if meta.is_dir() {
            collect_txt(&path, out, seen)?;
        } else if meta.is_file() && path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

/// A read-only view of a whole file (empty files cannot be mapped).
#[derive(Debug)]
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile> {
        let f = File::open(path).at(path)?;
        if f.metadata().at(path)?.len() == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the file is only read; the corpus must not be modified while it is tokenized
        // (the fingerprint check on resume catches a changed file).
        let map = unsafe { Mmap::map(&f) }.at(path)?;
        // Encoding reads every byte once, front to back within each chunk: ask for readahead.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedFile { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Unmap the pages of bytes `start..end` from this process once they have been read: the
    /// memory map would otherwise keep every page it touched resident, so the process's memory
    /// grew to the size of the corpus (3 GB for a 3 GB file). The page cache keeps the data;
    /// reading the bytes again faults them back in (a thread still reading a neighbouring range
    /// in a shared page at most reads that page twice).
    pub fn release(&self, start: usize, end: usize) {
        #[cfg(unix)]
        if let Some(map) = &self.map {
            let lo = start / RELEASE_ALIGN * RELEASE_ALIGN;
            let hi = end.next_multiple_of(RELEASE_ALIGN).min(map.len());
            if hi > lo {
                // SAFETY: a read-only shared map of a file: a released page reads the file again.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
            }
        }
    }
}

/// Released ranges widen to multiples of this: a touched byte can map the whole large folio of
/// the page cache around it (up to 2 MiB on x86-64), and a narrower release left most of it mapped
/// (a 300 MB corpus peaked at 150 MB with 64 KiB; 2 MiB is also a multiple of every page size).
const RELEASE_ALIGN: usize = 2 << 20;

/// A cheap content fingerprint: the size, the first and last MiB and 16 blocks of 64 KiB spread
/// over the file, hashed. It tells "the same file" from "another file" without reading 100 GB.
pub fn fingerprint(bytes: &[u8]) -> String {
    const EDGE: usize = 1 << 20;
    const BLOCK: usize = 1 << 16;
    let mut h = Xxh3::new();
    h.update(&(bytes.len() as u64).to_le_bytes());
    if bytes.len() <= 2 * EDGE + 16 * BLOCK {
        h.update(bytes);
    } else {
        h.update(&bytes[..EDGE]);
        let stride = (bytes.len() - BLOCK) / 16;
        for k in 0..16 {
            h.update(&bytes[k * stride..k * stride + BLOCK]);
        }
        h.update(&bytes[bytes.len() - EDGE..]);
    }
    format!("xxh3:{:016x}", h.digest())
}

/// Text of a piece of input with invalid UTF-8 replaced by U+FFFD (one per maximal invalid
/// sequence, as Python's `errors="replace"` does), and the number of bytes replaced.
pub fn decode_lossy(bytes: &[u8]) -> (std::borrow::Cow<'_, str>, u64) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.into(), 0),
        Err(_) => {
            let mut text = String::with_capacity(bytes.len() + 16);
            let mut replaced = 0u64;
            for chunk in bytes.utf8_chunks() {
                text.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    text.push('\u{FFFD}');
                    replaced += chunk.invalid().len() as u64;
                }
            }
            (text.into(), replaced)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lossy_decoding_matches_std() {
        let bytes = b"ok \xff\xfe caf\xc3\xa9 \xe2\x82 end \xf0\x9f\x98";
        let (text, replaced) = decode_lossy(bytes);
        assert_eq!(text, String::from_utf8_lossy(bytes));
        assert_eq!(replaced, 2 + 2 + 3);
    }

    #[test]
    fn folders_give_sorted_txt_files_and_survive_symlink_loops() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("b.txt"), "bb").unwrap();
        std::fs::write(d.join("a.txt"), "a").unwrap();
        std::fs::write(d.join("notes.md"), "ignored").unwrap();
        std::fs::write(d.join("sub/c.txt"), "ccc").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(d, d.join("sub/loop")).unwrap();
        let corpus = Corpus::open(&[d.to_path_buf()]).unwrap();
        let names: Vec<_> = corpus.files.iter().map(|f| f.path.strip_prefix(d).unwrap().to_path_buf()).collect();
        assert_eq!(names, vec![PathBuf::from("a.txt"), PathBuf::from("b.txt"), PathBuf::from("sub/c.txt")]);
        assert_eq!(corpus.total, 6);
        assert_eq!(corpus.locate(0), (0, 0));
        assert_eq!(corpus.locate(2), (1, 1));
        assert_eq!(corpus.locate(5), (2, 2));
    }

    #[test]
    fn a_file_given_twice_is_refused_however_it_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.txt"), "a").unwrap();
        std::fs::write(d.join("b.txt"), "b").unwrap();
        let twice = |inputs: &[PathBuf]| match Corpus::open(inputs) {
            Err(Error::Input(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let a = d.join("sub/a.txt");
        let m = twice(&[a.clone(), d.join("b.txt"), a.clone()]);
        assert!(m.starts_with(&format!("{} is among the inputs twice (as {})", a.display(), a.display())) && m.contains("give each file once"), "{m}");
        // Itself and its folder: both ways it was reached are named.
        let m = twice(&[d.join("sub"), d.join("sub/../sub/a.txt")]);
        assert!(m.contains(&format!("(as {} and as {})", a.display(), d.join("sub/../sub/a.txt").display())), "{m}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&a, d.join("sub/link.txt")).unwrap();
            let m = twice(&[d.join("sub")]);
            assert!(m.contains("link.txt") && m.contains("among the inputs twice"), "{m}");
        }
    }

    #[test]
    fn more_files_than_open_maps() {
        let dir = tempfile::tempdir().unwrap();
        let n = MAX_OPEN_MAPS + 100;
        for i in 0..n {
            std::fs::write(dir.path().join(format!("{i:05}.txt")), format!("file {i} ")).unwrap();
        }
        let corpus = Corpus::open(&[dir.path().to_path_buf()]).unwrap();
        let first = corpus.map(0).unwrap();
        for i in 0..n {
            assert_eq!(corpus.map(i).unwrap().bytes(), format!("file {i} ").as_bytes());
        }
        assert_eq!(corpus.maps.lock().unwrap().by_file.len(), MAX_OPEN_MAPS);
        assert_eq!(first.bytes(), b"file 0 "); // closed by the corpus, still alive here
    }

    #[test]
    fn a_file_that_grows_after_the_start_is_refused_when_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing.txt");
        std::fs::write(&path, "first part ").unwrap();
        let corpus = Corpus::open(std::slice::from_ref(&path)).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"appended later").unwrap();
        let err = corpus.map(0).unwrap_err().to_string();
        assert!(err.contains("growing.txt: changed size while being tokenized (11 bytes when the job started, now 25)"), "{err}");
    }

    #[test]
    fn missing_input_names_the_path() {
        let err = Corpus::open(&[PathBuf::from("/no/such/file.txt")]).unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        assert!(err.to_string().contains("/no/such/file.txt"));
    }
}
