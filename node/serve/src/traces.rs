//! The leaves of the sessions this worker claimed, kept on disk until their jobs settle, and
//! the openings made from them for the auditors the chain assigns.
//!
//! One file per claimed session, `DIR/JOB/SESSION` (hex), in the format of
//! [`bitorch_commitment::file`]. A file is written to a temporary name and renamed, so a crash
//! leaves either the whole file or none; one that does not parse is reported, never
//! half-read. Files survive restarts; the node removes those of jobs that no longer hold
//! escrow (settled or refunded: no audit can open them).

use bitorch_commitment::file::{decode_leaves, encode_leaves};
use bitorch_commitment::Leaf;
use bitorch_compute::{Floats, Logits, TraceOpening};
use bitorch_primitives::H256;
use bitorch_runtime::jobs::JobId;
use std::io;
use std::path::PathBuf;

/// Largest trace file read back (a 2,048-position session of hidden size 8,192 is 128 MiB).
const MAX_FILE_BYTES: u64 = 512 << 20;

/// Which page of a claim's opening to read ([`TraceStore::opening`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// First position of the page.
    pub from: u32,
    /// The audit opens positions `0..=last`.
    pub last: u32,
    /// The claim's positions.
    pub positions: u32,
    /// Most bytes of rows (and hashes) in the page; at least one row is always given.
    pub max_bytes: usize,
}

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

    /// Keeps the leaves of `session` of `job` (replacing any kept before), in the trace file
    /// format ([`bitorch_commitment::file`]).
    pub fn save(&self, job: JobId, session: &[u8; 16], leaves: &[Leaf]) -> io::Result<()> {
        let bytes = encode_leaves(leaves)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
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
        let bad = |what: &dyn std::fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
        };
        if size > MAX_FILE_BYTES {
            return Err(bad(&"larger than a trace can be"));
        }
        decode_leaves(&std::fs::read(&path)?).map_err(|e| bad(&e))
    }

    /// The opening of positions `0..=last` of the session's first `positions` leaves.
    pub fn opening(
        &self,
        job: JobId,
        session: &[u8; 16],
        page: Page,
    ) -> Result<TraceOpening, String> {
        let leaves = self.load(job, session).map_err(|e| format!("trace not kept: {e}"))?;
        let Page { from, last, positions, max_bytes } = page;
        let (from, last, positions) = (from as usize, last as usize, positions as usize);
        if last >= positions || leaves.len() < positions || from > last {
            return Err(format!(
                "the trace has {} positions; the audit opens {from}..={last} of {positions}",
                leaves.len()
            ));
        }
        let width = leaves[0].input.len();
        // The first page carries the hashes after `last`; the rows fill what is left.
        let hashes_after: Vec<H256> = if from == 0 {
            leaves[last + 1..positions].iter().map(|l| H256(l.hash())).collect()
        } else {
            Vec::new()
        };
        let room = max_bytes.saturating_sub(hashes_after.len() * 32);
        // Each row's floats and the logits committed there (a last stage's); at least one row.
        let mut rows = 0;
        let mut used = 0;
        for l in &leaves[from..=last] {
            used += 8 * width.max(1) + 8 * l.logits.len();
            if rows > 0 && used > room {
                break;
            }
            rows += 1;
        }
        let end = from + rows;
        let flat = |f: fn(&Leaf) -> &Vec<f32>| -> Vec<f32> {
            leaves[from..end].iter().flat_map(|l| f(l).iter().copied()).collect()
        };
        let shape = |v: Vec<f32>| {
            Floats::new(rows as u32, width as u32, &v)
                .ok_or_else(|| "trace of mixed widths".to_string())
        };
        Ok(TraceOpening {
            inputs: shape(flat(|l| &l.input))?,
            outputs: shape(flat(|l| &l.output))?,
            logits: leaves[from..end].iter().map(|l| Logits::new(&l.logits)).collect(),
            hashes_after,
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
                logits: if p == 2 { vec![(5, 1.5), (1, -0.5)] } else { Vec::new() },
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
        let page = |from, last, positions| Page { from, last, positions, max_bytes: 1 << 20 };
        let o = again.opening(3, &[9; 16], page(0, 2, 5)).unwrap();
        assert_eq!((o.inputs.rows(), o.inputs.cols(), o.hashes_after.len()), (3, 4, 2));
        assert_eq!(o.outputs.to_vec()[4..8], l[1].output[..]);
        assert_eq!(o.hashes_after[1], H256(l[4].hash()));
        assert_eq!(
            o.logits.iter().map(|x| x.to_vec()).collect::<Vec<_>>(),
            [vec![], vec![], l[2].logits.clone()]
        );
        // Positions past the trace, a prefix past the claim, or a page past it, are refused.
        assert!(again.opening(3, &[9; 16], page(0, 5, 5)).is_err());
        assert!(again.opening(3, &[9; 16], page(0, 1, 7)).is_err());
        assert!(again.opening(3, &[9; 16], page(3, 2, 5)).is_err());
        assert!(again.opening(4, &[9; 16], page(0, 1, 2)).unwrap_err().contains("not kept"));
        // Pages: rows of 2 × 4 floats are 32 bytes, 48 with position 2's two logits. With 100
        // bytes, the first page holds the two hashes after position 3 (64 bytes) and one row;
        // the next, rows 1 and 2 (80 bytes), then row 3.
        let small = |from| Page { from, last: 3, positions: 6, max_bytes: 100 };
        let o = again.opening(3, &[9; 16], small(0)).unwrap();
        assert_eq!((o.inputs.rows(), o.hashes_after.len()), (1, 2));
        let o = again.opening(3, &[9; 16], small(1)).unwrap();
        assert_eq!((o.inputs.rows(), o.hashes_after.len(), o.logits.len()), (2, 0, 2));
        assert_eq!(o.inputs.to_vec()[..4], l[1].input[..]);
        let o = again.opening(3, &[9; 16], small(3)).unwrap();
        assert_eq!((o.inputs.rows(), o.outputs.to_vec()), (1, l[3].output.clone()));
        // A budget smaller than a row still gives one.
        let tiny = Page { from: 0, last: 4, positions: 5, max_bytes: 0 };
        assert_eq!(again.opening(3, &[9; 16], tiny).unwrap().inputs.rows(), 1);
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
