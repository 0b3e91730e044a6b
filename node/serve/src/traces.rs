//! The leaves of the sessions this worker claimed, kept on disk until their jobs settle, and
//! the openings made from them for the auditors the chain assigns.
//!
//! One file per claimed session, `DIR/JOB/SESSION` (hex): the magic `BTRC1`, the number of
//! positions and the hidden width as u32 little-endian, then per position its input and its
//! output as f32 little-endian. A file is written to a temporary name and renamed, so a crash
//! leaves either the whole file or none; one that does not parse is reported, never
//! half-read. Files survive restarts; the node removes those of jobs that no longer hold
//! escrow (settled or refunded: no audit can open them).

use bitorch_commitment::Leaf;
use bitorch_compute::{Floats, TraceOpening};
use bitorch_primitives::H256;
use bitorch_runtime::jobs::JobId;
use std::io;
use std::path::PathBuf;

const MAGIC: &[u8; 5] = b"BTRC1";
/// Largest trace file read back (a 2,048-position session of hidden size 8,192 is 128 MiB).
const MAX_FILE_BYTES: u64 = 512 << 20;

/// Where a worker keeps the leaves of its claimed sessions.
#[derive(Debug, Clone)]
pub struct TraceStore {
    dir: PathBuf,
}

impl TraceStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, job: JobId, session: &[u8; 16]) -> PathBuf {
        self.dir.join(job.to_string()).join(hex::encode(session))
    }

    /// Keeps the leaves of `session` of `job` (replacing any kept before).
    pub fn save(&self, job: JobId, session: &[u8; 16], leaves: &[Leaf]) -> io::Result<()> {
        let width = leaves.first().map_or(0, |l| l.input.len());
        if leaves.iter().any(|l| l.input.len() != width || l.output.len() != width) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "leaves of mixed widths"));
        }
        let mut bytes = Vec::with_capacity(13 + leaves.len() * width * 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(leaves.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(width as u32).to_le_bytes());
        for l in leaves {
            for x in l.input.iter().chain(&l.output) {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        let path = self.path(job, session);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)
    }

    /// The leaves kept for `session` of `job`.
    pub fn load(&self, job: JobId, session: &[u8; 16]) -> io::Result<Vec<Leaf>> {
        let path = self.path(job, session);
        let size = std::fs::metadata(&path)?.len();
        let bad = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
        };
        if size > MAX_FILE_BYTES {
            return Err(bad("larger than a trace can be"));
        }
        let bytes = std::fs::read(&path)?;
        if bytes.len() < 13 || &bytes[..5] != MAGIC {
            return Err(bad("not a trace file"));
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        };
        let (n, width) = (word(5), word(9));
        let want =
            n.checked_mul(width).and_then(|x| x.checked_mul(8)).and_then(|x| x.checked_add(13));
        if want != Some(bytes.len()) {
            return Err(bad("its length does not match its header"));
        }
        let floats: Vec<f32> = bytes[13..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(floats
            .chunks_exact((2 * width).max(1))
            .take(n)
            .enumerate()
            .map(|(p, row)| Leaf {
                position: p as u32,
                input: row[..width].to_vec(),
                output: row[width..].to_vec(),
            })
            .collect())
    }

    /// The opening of positions `0..=last` of the session's first `positions` leaves.
    pub fn opening(
        &self,
        job: JobId,
        session: &[u8; 16],
        last: u32,
        positions: u32,
    ) -> Result<TraceOpening, String> {
        let leaves = self.load(job, session).map_err(|e| format!("trace not kept: {e}"))?;
        let (last, positions) = (last as usize, positions as usize);
        if last >= positions || leaves.len() < positions {
            return Err(format!(
                "the trace has {} positions; the audit opens 0..={last} of {positions}",
                leaves.len()
            ));
        }
        let width = leaves[0].input.len();
        let rows = (last + 1) as u32;
        let flat = |f: fn(&Leaf) -> &Vec<f32>| -> Vec<f32> {
            leaves[..=last].iter().flat_map(|l| f(l).iter().copied()).collect()
        };
        let shape = |v: Vec<f32>| {
            Floats::new(rows, width as u32, &v).ok_or_else(|| "trace of mixed widths".to_string())
        };
        Ok(TraceOpening {
            inputs: shape(flat(|l| &l.input))?,
            outputs: shape(flat(|l| &l.output))?,
            hashes_after: leaves[last + 1..positions].iter().map(|l| H256(l.hash())).collect(),
        })
    }

    /// The jobs it keeps traces of.
    pub fn jobs(&self) -> io::Result<Vec<JobId>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(job) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Removes every trace of these jobs.
    pub fn remove(&self, jobs: &[JobId]) -> io::Result<()> {
        for job in jobs {
            std::fs::remove_dir_all(self.dir.join(job.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u32, width: usize) -> Vec<Leaf> {
        (0..n)
            .map(|p| Leaf {
                position: p,
                input: (0..width).map(|i| (p as f32) + i as f32 * 0.5).collect(),
                output: (0..width).map(|i| -(p as f32) * 1.5 - i as f32).collect(),
            })
            .collect()
    }

    #[test]
    fn kept_leaves_come_back_bit_for_bit_and_open_with_the_hashes_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path().join("traces")).unwrap();
        let l = leaves(6, 4);
        store.save(3, &[9; 16], &l).unwrap();
        // Another store on the same folder (a restart) finds them.
        let again = TraceStore::open(dir.path().join("traces")).unwrap();
        assert_eq!(again.load(3, &[9; 16]).unwrap(), l);
        let o = again.opening(3, &[9; 16], 2, 5).unwrap();
        assert_eq!((o.inputs.rows(), o.inputs.cols(), o.hashes_after.len()), (3, 4, 2));
        assert_eq!(o.outputs.to_vec()[4..8], l[1].output[..]);
        assert_eq!(o.hashes_after[1], H256(l[4].hash()));
        // Positions past the trace, or a prefix past the claim, are refused.
        assert!(again.opening(3, &[9; 16], 5, 5).is_err());
        assert!(again.opening(3, &[9; 16], 1, 7).is_err());
        assert!(again.opening(4, &[9; 16], 1, 2).unwrap_err().contains("not kept"));
        // A damaged file is an error, not a half trace.
        let path = again.path(3, &[9; 16]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(again.load(3, &[9; 16]).unwrap_err().kind(), io::ErrorKind::InvalidData);
        // Removing a job's traces leaves the others.
        store.save(4, &[1; 16], &l).unwrap();
        let mut jobs = store.jobs().unwrap();
        jobs.sort();
        assert_eq!(jobs, [3, 4]);
        store.remove(&[3]).unwrap();
        assert_eq!(store.jobs().unwrap(), [4]);
        assert!(store.load(3, &[9; 16]).is_err());
        assert!(store.load(4, &[1; 16]).is_ok());
    }
}
