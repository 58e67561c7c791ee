//! The embedded store's import spool: a population upload is written to a
//! private file beside the database as it arrives, and only the merge takes
//! the single writer. A stalled feed then holds a file, not the lock an
//! urgent block needs (SPEC §7).
//!
//! The spool also sorts: it is written as sorted runs of [`RUN`] records
//! and read back merged, in identity-number order. The merge then walks
//! `persons` and the history's by-person index from one end to the other
//! instead of landing at random pages, so it needs no large page cache
//! (which the allocator would keep after the import) and runs faster.
//!
//! The file has no name (`O_TMPFILE`): it lives only as long as the import
//! holds it, nothing is left by a crash, and another process opening the
//! same store (the command line) cannot touch it. It is not synced:
//! the merge's commit is what makes an import durable. Per record: `u64`
//! id, `i32` birth date (`yyyymmdd`, 0 for none), `u8` protected, `u8`
//! guardian count and `u64` per guardian, little-endian; read back only by
//! the process that wrote it, and still validated (a damaged spool fails
//! the import, it is never half-applied).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use jiff::civil::Date;

use super::StoreError;
use crate::core::identity::Pid;
use crate::core::people::PersonRecord;

/// Records sorted in memory before they are written as one run: a few MB.
/// A national import (4.7 million) is 73 runs.
pub(crate) const RUN: usize = 1 << 16;

/// Records a merged batch holds.
const BATCH: usize = 16_384;

/// The read buffer of each run while merging.
const RUN_BUFFER: usize = 128 * 1024;

/// A spool being written; gone when dropped.
pub(crate) struct Spool {
    out: BufWriter<File>,
    /// The run being gathered.
    run: Vec<PersonRecord>,
    /// Each written run: its first byte and its number of records.
    runs: Vec<(u64, u64)>,
    /// Bytes written so far.
    written: u64,
    /// Records received.
    pub(crate) records: u64,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull => StoreError::DiskFull(format!("the import spool: {what}: {e}")),
        _ => StoreError::Unavailable(format!("the import spool: {what}: {e}")),
    }
}

impl Spool {
    /// A new, private spool file in `dir`.
    pub(crate) fn create(dir: &Path) -> Result<Spool, StoreError> {
        // No name, `0600`, freed when closed.
        let file = tempfile::tempfile_in(dir).map_err(|e| io("cannot create it", e))?;
        Ok(Spool {
            out: BufWriter::with_capacity(1 << 20, file),
            run: Vec::new(),
            runs: Vec::new(),
            written: 0,
            records: 0,
        })
    }

    /// Takes one batch, in the order received.
    pub(crate) fn write(&mut self, batch: Vec<PersonRecord>) -> Result<(), StoreError> {
        let n = batch.len() as u64;
        for p in batch {
            if p.guardians.len() > usize::from(u8::MAX) {
                return Err(StoreError::Corrupt("a person has too many guardians".into()));
            }
            self.run.push(p);
            if self.run.len() == RUN {
                self.write_run()?;
            }
        }
        self.records += n;
        Ok(())
    }

    /// Sorts the gathered run and appends it to the file.
    fn write_run(&mut self) -> Result<(), StoreError> {
        if self.run.is_empty() {
            return Ok(());
        }
        // Stable: a later line for the same person still comes later, and wins.
        self.run.sort_by_key(|p| p.id);
        let start = self.written;
        let out = &mut self.out;
        let mut bytes = 0u64;
        let mut w = |b: &[u8]| {
            bytes += b.len() as u64;
            out.write_all(b).map_err(|e| io("cannot write it", e))
        };
        for p in &self.run {
            w(&p.id.get().to_le_bytes())?;
            w(&p.birth_date.map_or(0, date_number).to_le_bytes())?;
            w(&[u8::from(p.protected)])?;
            // At most 255: checked as the record came in.
            w(&[u8::try_from(p.guardians.len()).unwrap_or(u8::MAX)])?;
            for g in &p.guardians {
                w(&g.get().to_le_bytes())?;
            }
        }
        self.written += bytes;
        self.runs.push((start, self.run.len() as u64));
        self.run.clear();
        Ok(())
    }

    /// Finishes writing; the spool is read back merged, in number order.
    pub(crate) fn finish(mut self) -> Result<Spooled, StoreError> {
        self.write_run()?;
        self.run = Vec::new();
        let file = Arc::new(
            self.out
                .into_inner()
                .map_err(|e| io("cannot write it", e.into_error()))?,
        );
        let mut ends: Vec<u64> = self.runs.iter().skip(1).map(|r| r.0).collect();
        ends.push(self.written);
        let mut runs: Vec<Run> = self
            .runs
            .iter()
            .zip(ends)
            .map(|(&(start, count), end)| Run {
                input: BufReader::with_capacity(
                    RUN_BUFFER,
                    At {
                        file: file.clone(),
                        offset: start,
                        end,
                    },
                ),
                left: count,
            })
            .collect();
        let mut heads = Vec::with_capacity(runs.len());
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for (i, run) in runs.iter_mut().enumerate() {
            let head = run.next()?;
            if let Some(p) = &head {
                heap.push(Reverse((p.id.get(), i)));
            }
            heads.push(head);
        }
        Ok(Spooled {
            runs,
            heads,
            heap,
            records: self.records,
        })
    }
}

/// Reads a range of the spool file at its own offset, so that every run
/// can be read side by side from one open file.
struct At {
    file: Arc<File>,
    offset: u64,
    end: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.offset)).unwrap_or(usize::MAX);
        let take = buf.len().min(left);
        let n = self.file.read_at(&mut buf[..take], self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// One sorted run being read back.
struct Run {
    input: BufReader<At>,
    left: u64,
}

impl Run {
    fn next(&mut self) -> Result<Option<PersonRecord>, StoreError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let input = &mut self.input;
        let id = pid(read_u64(input)?)?;
        let birth_date = match read_i32(input)? {
            0 => None,
            n => Some(number_date(n)?),
        };
        let protected = read_u8(input)? != 0;
        let n = read_u8(input)?;
        let guardians = (0..n).map(|_| pid(read_u64(input)?)).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(PersonRecord {
            id,
            birth_date,
            protected,
            guardians,
        }))
    }
}

/// A written spool, read back merged; gone when dropped.
pub(crate) struct Spooled {
    runs: Vec<Run>,
    /// The next record of each run.
    heads: Vec<Option<PersonRecord>>,
    /// The runs by their next record's number; on a tie the earlier run
    /// first, so that the later line comes later and wins.
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    /// Records in it.
    pub(crate) records: u64,
}

impl Spooled {
    /// The next batch, in number order, or `None` at the end.
    pub(crate) fn next_batch(&mut self) -> Result<Option<Vec<PersonRecord>>, StoreError> {
        let mut batch = Vec::with_capacity(BATCH.min(usize::try_from(self.records).unwrap_or(BATCH)));
        while batch.len() < BATCH {
            let Some(Reverse((_, i))) = self.heap.pop() else {
                break;
            };
            let next = self.runs[i].next()?;
            if let Some(p) = &next {
                self.heap.push(Reverse((p.id.get(), i)));
            }
            if let Some(p) = std::mem::replace(&mut self.heads[i], next) {
                batch.push(p);
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

fn date_number(d: Date) -> i32 {
    i32::from(d.year()) * 10_000 + i32::from(d.month()) * 100 + i32::from(d.day())
}

fn number_date(n: i32) -> Result<Date, StoreError> {
    let bad = || StoreError::Corrupt("the import spool holds an invalid date".into());
    let year = i16::try_from(n / 10_000).map_err(|_| bad())?;
    let month = i8::try_from(n / 100 % 100).map_err(|_| bad())?;
    let day = i8::try_from(n % 100).map_err(|_| bad())?;
    Date::new(year, month, day).map_err(|_| bad())
}

fn pid(v: u64) -> Result<Pid, StoreError> {
    Pid::from_u64(v).map_err(|_| StoreError::Corrupt("the import spool holds an invalid identity number".into()))
}

fn read_bytes<const N: usize>(input: &mut impl Read) -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    input.read_exact(&mut b).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StoreError::Corrupt("the import spool is truncated".into()),
        _ => io("cannot read it back", e),
    })?;
    Ok(b)
}

fn read_u64(input: &mut impl Read) -> Result<u64, StoreError> {
    read_bytes::<8>(input).map(u64::from_le_bytes)
}

fn read_i32(input: &mut impl Read) -> Result<i32, StoreError> {
    read_bytes::<4>(input).map(i32::from_le_bytes)
}

fn read_u8(input: &mut impl Read) -> Result<u8, StoreError> {
    read_bytes::<1>(input).map(|[b]| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_reads_back_what_was_written_sorted_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let today = jiff::civil::date(2026, 11, 23);
        let kid = Pid::parse("201509162390", today).unwrap();
        let mother = Pid::parse("197701012382", today).unwrap();
        let batches = vec![
            vec![PersonRecord {
                id: kid,
                birth_date: Some(jiff::civil::date(2015, 9, 16)),
                protected: true,
                guardians: vec![mother],
            }],
            vec![PersonRecord {
                id: mother,
                birth_date: None,
                protected: false,
                guardians: vec![],
            }],
        ];
        let mut spool = Spool::create(dir.path()).unwrap();
        for b in &batches {
            spool.write(b.clone()).unwrap();
        }
        let mut spooled = spool.finish().unwrap();
        assert_eq!(spooled.records, 2);
        let mut back = Vec::new();
        while let Some(b) = spooled.next_batch().unwrap() {
            back.extend(b);
        }
        // Everything, in number order.
        assert_eq!(back, vec![batches[1][0].clone(), batches[0][0].clone()]);
        drop(spooled);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "it never had a name");
    }

    #[test]
    fn a_truncated_spool_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let today = jiff::civil::date(2026, 11, 23);
        let kid = Pid::parse("201509162390", today).unwrap();
        let rec = PersonRecord {
            id: kid,
            birth_date: None,
            protected: false,
            guardians: vec![],
        };
        let mut spool = Spool::create(dir.path()).unwrap();
        spool.write(vec![rec]).unwrap();
        spool.write_run().unwrap();
        spool.out.flush().unwrap();
        // Cut the run of one short by three bytes.
        let f = spool.out.get_mut();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 3).unwrap();
        assert!(matches!(spool.finish(), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn runs_merge_in_number_order_and_the_last_line_for_a_person_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = crate::synth::Rng::new(5);
        // Three and a half runs of numbers made here, each person sent
        // twice (in different runs, or in the same one), with a different
        // protected flag the second time.
        let n = RUN * 7 / 4;
        let ids: Vec<Pid> = (0..n)
            .filter_map(|_| {
                let (year, month, day) = (
                    1930 + rng.below(90) as i16,
                    1 + rng.below(12) as u8,
                    1 + rng.below(28) as u8,
                );
                crate::core::identity::make_pid(year, month, day, rng.below(999) as u16)
            })
            .collect();
        let n = ids.len();
        let record = |id: Pid, protected: bool| PersonRecord {
            id,
            birth_date: id.birth_date(),
            protected,
            guardians: vec![],
        };
        let mut spool = Spool::create(dir.path()).unwrap();
        let first: Vec<PersonRecord> = ids.iter().map(|&id| record(id, false)).collect();
        let second: Vec<PersonRecord> = ids.iter().rev().map(|&id| record(id, true)).collect();
        for batch in first.chunks(5_000).chain(second.chunks(5_000)) {
            spool.write(batch.to_vec()).unwrap();
        }
        let mut spooled = spool.finish().unwrap();
        assert_eq!(spooled.records, 2 * n as u64);
        let mut back = Vec::new();
        while let Some(b) = spooled.next_batch().unwrap() {
            back.extend(b);
        }
        assert_eq!(back.len(), 2 * n);
        assert!(back.windows(2).all(|w| w[0].id <= w[1].id), "in number order");
        // Applied in this order, every person ends with the second line.
        let mut last = std::collections::HashMap::new();
        for p in &back {
            last.insert(p.id, p.protected);
        }
        assert!(last.values().all(|&protected| protected));
    }
}
