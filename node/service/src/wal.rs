//! The consensus write-ahead log on disk: one append-only file, `<chain dir>/consensus/wal`,
//! holding the entries of the height being decided (see [`bitorch_consensus::wal`] for what
//! they are and when the engine writes and flushes them).
//!
//! Layout: a header of [`HEADER_LEN`] bytes (the magic `BITWAL01`, the height as a u64
//! little endian, and a checksum of both), then records: the entry's length (u32 little
//! endian), a checksum of the length and the entry, and the entry. A checksum is the first 8
//! bytes of blake2-256.
//!
//! A crash can tear the last record (a write that never completed; nothing it held was
//! published, because publishing waits for the fsync). Reading stops at the first record that
//! is incomplete or fails its checksum; a torn *last* record is expected and cut off when the
//! log is opened. Damage before the end is not expected: the entries after it are lost, and
//! replaying the rest could sign a conflicting vote, so [`FileWal::entries`] refuses that
//! height and the validator sits it out.
//!
//! A new height rewrites the file: the new header goes to `wal.tmp`, which is fsynced and
//! renamed over `wal`, and then the directory is fsynced, so a crash leaves one log or the
//! other whole. The log of one height is bounded ([`DEFAULT_MAX_BYTES`]); past it, appends
//! fail and the validator stops signing until the next height.
//!
//! The file is written with blocking calls from the consensus task: appends are buffered, and
//! one `fdatasync` per published message is the price of never contradicting ourselves.

use bitorch_consensus::wal::{Wal, MAX_ENTRY_BYTES};
use bitorch_consensus::WalError;
use bitorch_primitives::blake2_256;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Most bytes the log of one height may hold: room for tens of rounds of proposals of the
/// largest blocks (each proposal is recorded with its block, as a proposal and as a value).
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Size of the file header.
pub const HEADER_LEN: u64 = 24;
const MAGIC: &[u8; 8] = b"BITWAL01";
/// Length and checksum before each entry.
const RECORD_HEADER_LEN: usize = 12;

fn checksum(parts: &[&[u8]]) -> [u8; 8] {
    let hash = blake2_256(&parts.concat());
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash.as_bytes()[..8]);
    out
}

fn header(height: u64) -> Vec<u8> {
    let height = height.to_le_bytes();
    [&MAGIC[..], &height, &checksum(&[MAGIC, &height])].concat()
}

/// Whether (and where) a stored log is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Every record is whole.
    None,
    /// The last record is incomplete or fails its checksum: a write cut short by a crash.
    TornTail,
    /// A record before the last fails its checksum (or claims an impossible length): the
    /// records from `offset` on are lost.
    Corrupt {
        /// Where the bad record starts.
        offset: u64,
    },
}

/// What a log file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    /// The height it records.
    pub height: u64,
    /// The entries that read back whole, oldest first; reading stops at the first damage.
    pub entries: Vec<Vec<u8>>,
    /// Where the whole records end.
    pub end: u64,
    /// Damage after them, if any.
    pub damage: Damage,
}

/// Reads a log file: `None` if there is none.
pub fn read(path: &Path) -> Result<Option<Contents>, WalError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(parse(&bytes)?))
}

fn parse(bytes: &[u8]) -> Result<Contents, WalError> {
    let header_len = HEADER_LEN as usize;
    let head = bytes.get(..header_len).ok_or(WalError::BadHeader)?;
    let (magic, rest) = head.split_at(8);
    let (height, sum) = rest.split_at(8);
    if magic != MAGIC || sum != checksum(&[magic, height]) {
        return Err(WalError::BadHeader);
    }
    let mut height_bytes = [0u8; 8];
    height_bytes.copy_from_slice(height);
    let height = u64::from_le_bytes(height_bytes);

    let mut entries = Vec::new();
    let mut at = header_len;
    let damage = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break Damage::None;
        }
        if rest.len() < RECORD_HEADER_LEN {
            break Damage::TornTail;
        }
        let (len, rest) = rest.split_at(4);
        let (sum, rest) = rest.split_at(8);
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(len);
        let n = u32::from_le_bytes(len_bytes) as usize;
        if n > MAX_ENTRY_BYTES {
            // No write of ours claims this much: not a torn write but a damaged one.
            break Damage::Corrupt { offset: at as u64 };
        }
        let Some(entry) = rest.get(..n) else { break Damage::TornTail };
        if sum != checksum(&[len, entry]) {
            let last = rest.len() == n;
            break if last { Damage::TornTail } else { Damage::Corrupt { offset: at as u64 } };
        }
        entries.push(entry.to_vec());
        at += RECORD_HEADER_LEN + n;
    };
    Ok(Contents { height, entries, end: at as u64, damage })
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The write-ahead log in a file; see the module docs.
#[derive(Debug)]
pub struct FileWal {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    height: u64,
    /// Bytes in the file, written or buffered.
    size: u64,
    max_bytes: u64,
    /// Where the log of `height` is damaged before its end, if it is.
    corrupt_at: Option<u64>,
    /// The entries read when the log was opened, until something is appended: the first
    /// replay needs no second read.
    recovered: Option<Vec<Vec<u8>>>,
    /// A write or sync failed: the file may end in a partial record, and what the last
    /// sync covered is unknown. Nothing more is accepted until the next reset.
    broken: bool,
}

impl FileWal {
    /// Opens (or creates) the log at `path` with the default size limit.
    pub fn open(path: &Path) -> Result<Self, WalError> {
        Self::open_with_limit(path, DEFAULT_MAX_BYTES)
    }

    /// Opens (or creates) the log at `path`; the log of one height holds at most `max_bytes`.
    /// A torn last record is cut off. A header that does not read back is an error: which
    /// height the log records is then unknown.
    pub fn open_with_limit(path: &Path, max_bytes: u64) -> Result<Self, WalError> {
        let mut wal = Self {
            path: path.to_path_buf(),
            writer: None,
            height: 0,
            size: 0,
            max_bytes,
            corrupt_at: None,
            recovered: None,
            broken: true,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let Some(contents) = read(path)? else {
            wal.reset(0)?;
            return Ok(wal);
        };
        match contents.damage {
            Damage::None => {}
            Damage::TornTail => {
                tracing::warn!(target: "wal", path = %path.display(), height = contents.height, end = contents.end, "write-ahead log ends in a torn record (a crash during a write); dropping it");
                let file = OpenOptions::new().write(true).open(path)?;
                file.set_len(contents.end)?;
                file.sync_all()?;
            }
            Damage::Corrupt { offset } => {
                tracing::error!(target: "wal", path = %path.display(), height = contents.height, offset, "write-ahead log is corrupt before its end; this validator sits out that height");
                wal.corrupt_at = Some(offset);
            }
        }
        tracing::info!(target: "wal", path = %path.display(), height = contents.height, entries = contents.entries.len(), "opened the consensus write-ahead log");
        wal.height = contents.height;
        wal.size = contents.end;
        if wal.corrupt_at.is_none() {
            wal.recovered = Some(contents.entries);
        }
        wal.writer = Some(BufWriter::new(OpenOptions::new().append(true).open(path)?));
        wal.broken = false;
        Ok(wal)
    }

    /// The height the log records.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Bytes the log holds (written or buffered).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn usable(&self) -> Result<(), WalError> {
        if let Some(offset) = self.corrupt_at {
            return Err(WalError::Corrupt { height: self.height, offset });
        }
        if self.broken {
            return Err(io::Error::other("an earlier write to the write-ahead log failed").into());
        }
        Ok(())
    }

    /// Runs a write; any failure leaves the log broken until the next reset.
    fn write(
        &mut self,
        f: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> Result<(), WalError> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("the write-ahead log is not open"))?;
        f(writer).map_err(|e| {
            self.broken = true;
            WalError::Io(e)
        })
    }
}

impl Wal for FileWal {
    fn entries(&mut self, height: u64) -> Result<Vec<Vec<u8>>, WalError> {
        if height != self.height {
            return Ok(Vec::new());
        }
        self.usable()?;
        if let Some(entries) = self.recovered.take() {
            return Ok(entries);
        }
        self.write(|w| w.flush())?;
        let contents = read(&self.path)?
            .ok_or_else(|| io::Error::other("the write-ahead log file disappeared"))?;
        match contents.damage {
            Damage::None if contents.height == height => Ok(contents.entries),
            // We wrote all of it and nothing failed: any damage is corruption.
            _ => Err(WalError::Corrupt { height, offset: contents.end }),
        }
    }

    fn reset(&mut self, height: u64) -> Result<(), WalError> {
        // Until the new file is in place, the state of the log is unknown.
        self.broken = true;
        self.writer = None;
        self.recovered = None;
        let tmp = self.path.with_extension("tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&header(height))?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        self.writer = Some(BufWriter::new(OpenOptions::new().append(true).open(&self.path)?));
        self.height = height;
        self.size = HEADER_LEN;
        self.corrupt_at = None;
        self.broken = false;
        Ok(())
    }

    fn append(&mut self, height: u64, entry: &[u8]) -> Result<(), WalError> {
        self.usable()?;
        if height != self.height {
            return Err(WalError::WrongHeight { log: self.height, entry: height });
        }
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(WalError::EntryTooLarge { size: entry.len(), limit: MAX_ENTRY_BYTES });
        }
        let size = self.size.saturating_add((RECORD_HEADER_LEN + entry.len()) as u64);
        if size > self.max_bytes {
            return Err(WalError::Full { size, limit: self.max_bytes });
        }
        // The limit above keeps the length within u32.
        let len = (entry.len() as u32).to_le_bytes();
        let sum = checksum(&[&len, entry]);
        self.write(|w| {
            w.write_all(&len)?;
            w.write_all(&sum)?;
            w.write_all(entry)
        })?;
        self.size = size;
        self.recovered = None;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WalError> {
        self.usable()?;
        self.write(|w| {
            w.flush()?;
            w.get_ref().sync_data()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("consensus").join("wal")
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 10 + i * 7]).collect()
    }

    fn written(path: &Path, height: u64, items: &[Vec<u8>]) -> FileWal {
        let mut wal = FileWal::open(path).unwrap();
        wal.reset(height).unwrap();
        for e in items {
            wal.append(height, e).unwrap();
        }
        wal.flush().unwrap();
        wal
    }

    #[test]
    fn round_trip_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(&dir);
        let items = entries(3);
        let mut wal = written(&path, 5, &items);
        assert_eq!(wal.entries(5).unwrap(), items);
        assert!(wal.entries(4).unwrap().is_empty());
        drop(wal);

        let mut wal = FileWal::open(&path).unwrap();
        assert_eq!(wal.height(), 5);
        assert_eq!(wal.entries(5).unwrap(), items);
        // Appends after reopening go to the same log.
        wal.append(5, b"more").unwrap();
        assert!(matches!(wal.append(6, b"x"), Err(WalError::WrongHeight { log: 5, entry: 6 })));
        wal.flush().unwrap();
        let mut all = items.clone();
        all.push(b"more".to_vec());
        assert_eq!(wal.entries(5).unwrap(), all);
        drop(wal);
        let contents = read(&path).unwrap().unwrap();
        assert_eq!((contents.height, contents.entries, contents.damage), (5, all, Damage::None));
        // An empty entry is an entry too.
        let mut wal = written(&path, 6, &[Vec::new()]);
        assert_eq!(wal.entries(6).unwrap(), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn a_new_log_has_height_zero_and_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = FileWal::open(&log(&dir)).unwrap();
        assert_eq!(wal.height(), 0);
        assert!(wal.entries(0).unwrap().is_empty());
        assert!(wal.entries(1).unwrap().is_empty());
        assert!(matches!(wal.append(1, b"x"), Err(WalError::WrongHeight { log: 0, entry: 1 })));
    }

    #[test]
    fn torn_tail_is_ignored_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(&dir);
        let items = entries(3);
        drop(written(&path, 9, &items));
        let whole = fs::metadata(&path).unwrap().len();

        // Three ways a crash tears the last write: a partial record header, a record shorter
        // than its length, a record whose bytes did not all reach the disk.
        let len = (100u32).to_le_bytes();
        let last = {
            let entry = vec![7u8; 20];
            let len = (entry.len() as u32).to_le_bytes();
            let mut r = [&len[..], &checksum(&[&len, &entry]), &entry].concat();
            let n = r.len();
            r[n - 1] ^= 0xff;
            r
        };
        for tail in [vec![1u8, 2, 3], [&len[..], &[0; 8], &[5; 40]].concat(), last] {
            let mut bytes = fs::read(&path).unwrap();
            bytes.truncate(whole as usize);
            bytes.extend_from_slice(&tail);
            fs::write(&path, &bytes).unwrap();

            let contents = read(&path).unwrap().unwrap();
            assert_eq!(contents.damage, Damage::TornTail);
            assert_eq!(contents.entries, items);
            assert_eq!(contents.end, whole);

            let mut wal = FileWal::open(&path).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), whole, "the torn record is cut off");
            assert_eq!(wal.entries(9).unwrap(), items);
            wal.append(9, b"after").unwrap();
            wal.flush().unwrap();
            let mut all = items.clone();
            all.push(b"after".to_vec());
            assert_eq!(read(&path).unwrap().unwrap().entries, all);
        }
    }

    #[test]
    fn a_corrupted_record_stops_reading_and_the_height_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(&dir);
        let items = entries(3);
        drop(written(&path, 4, &items));
        let mut bytes = fs::read(&path).unwrap();
        // A bit flips inside the second entry.
        let second = HEADER_LEN as usize + RECORD_HEADER_LEN + items[0].len();
        bytes[second + RECORD_HEADER_LEN + 3] ^= 1;
        fs::write(&path, &bytes).unwrap();

        let contents = read(&path).unwrap().unwrap();
        assert_eq!(contents.entries, items[..1].to_vec());
        assert_eq!(contents.damage, Damage::Corrupt { offset: second as u64 });

        // An impossible length is corruption too, not a torn write.
        let mut long = fs::read(&path).unwrap();
        long[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&long).unwrap().damage, Damage::Corrupt { .. }));

        let mut wal = FileWal::open(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), bytes.len() as u64, "left as found");
        assert!(matches!(wal.entries(4), Err(WalError::Corrupt { height: 4, .. })));
        assert!(matches!(wal.append(4, b"x"), Err(WalError::Corrupt { .. })));
        // Other heights are fine, and the next height starts a sound log.
        assert!(wal.entries(5).unwrap().is_empty());
        wal.reset(5).unwrap();
        wal.append(5, b"x").unwrap();
        assert_eq!(wal.entries(5).unwrap(), vec![b"x".to_vec()]);
    }

    #[test]
    fn a_new_height_truncates_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(&dir);
        let mut wal = written(&path, 2, &entries(4));
        wal.reset(3).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), HEADER_LEN);
        assert!(!path.with_extension("tmp").exists());
        assert!(wal.entries(2).unwrap().is_empty());
        assert!(wal.entries(3).unwrap().is_empty());
        wal.append(3, b"new").unwrap();
        wal.flush().unwrap();
        drop(wal);
        let contents = read(&path).unwrap().unwrap();
        assert_eq!((contents.height, contents.entries), (3, vec![b"new".to_vec()]));
    }

    #[test]
    fn the_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(&dir);
        let mut wal = FileWal::open_with_limit(&path, HEADER_LEN + 2 * 22).unwrap();
        wal.reset(1).unwrap();
        wal.append(1, &[0; 10]).unwrap();
        wal.append(1, &[1; 10]).unwrap();
        assert!(matches!(wal.append(1, &[2; 1]), Err(WalError::Full { .. })));
        let big = vec![0u8; MAX_ENTRY_BYTES + 1];
        assert!(matches!(wal.append(1, &big), Err(WalError::EntryTooLarge { .. })));
        // What fit is intact, and the next height has room again.
        assert_eq!(wal.entries(1).unwrap(), vec![vec![0; 10], vec![1; 10]]);
        wal.reset(2).unwrap();
        wal.append(2, &[3; 10]).unwrap();
    }

    #[test]
    fn a_validator_restarted_on_its_file_replays_the_height() {
        use bitorch_consensus::{
            Action, Config, Consensus, MalachiteConsensus, ValidatorSet, Value,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = log(&dir);
        let key = bitorch_primitives::keys::pair_from_suri("//Alice").unwrap();
        let vs = ValidatorSet::equal([bitorch_primitives::keys::account_of(&key)]).unwrap();
        let config = Config::new(blake2_256(b"genesis"));
        let engine = |wal: FileWal| {
            MalachiteConsensus::new(config.clone(), key.clone(), 1, vs.clone(), Box::new(wal))
        };
        let broadcasts = |actions: &[Action]| -> Vec<Vec<u8>> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Broadcast(b) => Some(b.clone()),
                    _ => None,
                })
                .collect()
        };
        let decided = |actions: &[Action]| {
            actions.iter().find_map(|a| match a {
                Action::Decided(d) => Some(d.value.clone()),
                _ => None,
            })
        };

        let mut first = engine(FileWal::open(&path).unwrap());
        first.start_height(1, vs.clone()).unwrap();
        let bytes = b"block 1".to_vec();
        let value = Value { hash: blake2_256(&bytes), bytes };
        let actions = first.propose(1, 0, value.clone()).unwrap();
        let sent = broadcasts(&actions);
        assert_eq!(decided(&actions), Some(value.clone()));
        assert!(sent.len() >= 3, "proposal, prevote and precommit: {actions:?}");
        // The node dies before importing the block; the log is all that is left.
        drop(first);

        let mut second = engine(FileWal::open(&path).unwrap());
        let actions = second.start_height(1, vs.clone()).unwrap();
        // The same votes, signatures and all, go out again, and the same block is decided.
        let again = broadcasts(&actions);
        for vote in sent.iter().filter(|b| {
            matches!(
                bitorch_consensus::wire::Message::from_bytes(b),
                Ok(bitorch_consensus::wire::Message::Vote(_))
            )
        }) {
            assert!(again.contains(vote), "vote not sent again: {actions:?}");
        }
        assert_eq!(decided(&actions), Some(value));
        assert!(!actions.iter().any(|a| matches!(a, Action::GetValue { .. })));
        // The next height starts a fresh log.
        second.start_height(2, vs).unwrap();
        drop(second);
        let contents = read(&path).unwrap().unwrap();
        assert_eq!(contents.height, 2);
    }

    #[test]
    fn a_damaged_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(&dir);
        drop(written(&path, 2, &entries(1)));
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(FileWal::open(&path), Err(WalError::BadHeader)));
        fs::write(&path, b"BITWAL").unwrap();
        assert!(matches!(FileWal::open(&path), Err(WalError::BadHeader)));
    }
}
