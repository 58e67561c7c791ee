//! The embedded store's import spool: a population upload is written to a
//! private file beside the database as it arrives, and only the merge takes
//! the single writer. A stalled feed then holds a file, not the lock an
//! urgent block needs (SPEC §7).
//!
//! The file has no name (`O_TMPFILE`): it lives only as long as the import
//! holds it, nothing is left by a crash, and another process opening the
//! same store (the command line) cannot touch it. It is not synced:
//! the merge's commit is what makes an import durable. Each batch is
//! `u32` count, then per record `u64` id, `i32` birth date (`yyyymmdd`, 0
//! for none), `u8` protected, `u8` guardian count and `u64` per guardian,
//! little-endian; read back only by the process that wrote it, and still
//! validated (a damaged spool fails the import, it is never half-applied).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use jiff::civil::Date;

use super::StoreError;
use crate::core::identity::Pid;
use crate::core::people::PersonRecord;

/// A spool being written; gone when dropped.
pub(crate) struct Spool {
    out: BufWriter<File>,
    /// Records written.
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
            records: 0,
        })
    }

    /// Appends one batch.
    pub(crate) fn write(&mut self, batch: &[PersonRecord]) -> Result<(), StoreError> {
        let count =
            u32::try_from(batch.len()).map_err(|_| StoreError::Corrupt("an import batch is too large".into()))?;
        let out = &mut self.out;
        let w = |out: &mut BufWriter<File>, bytes: &[u8]| out.write_all(bytes).map_err(|e| io("cannot write it", e));
        w(out, &count.to_le_bytes())?;
        for p in batch {
            w(out, &p.id.get().to_le_bytes())?;
            w(out, &p.birth_date.map_or(0, date_number).to_le_bytes())?;
            w(out, &[u8::from(p.protected)])?;
            let n = u8::try_from(p.guardians.len())
                .map_err(|_| StoreError::Corrupt("a person has too many guardians".into()))?;
            w(out, &[n])?;
            for g in &p.guardians {
                w(out, &g.get().to_le_bytes())?;
            }
        }
        self.records += u64::from(count);
        Ok(())
    }

    /// Finishes writing; the spool is read back batch by batch.
    pub(crate) fn finish(self) -> Result<Spooled, StoreError> {
        use std::io::Seek;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| io("cannot write it", e.into_error()))?;
        file.rewind().map_err(|e| io("cannot read it back", e))?;
        Ok(Spooled {
            input: BufReader::with_capacity(1 << 20, file),
            records: self.records,
        })
    }
}

/// A written spool, read back in the batches it was written in; gone when
/// dropped.
pub(crate) struct Spooled {
    input: BufReader<File>,
    /// Records in it.
    pub(crate) records: u64,
}

impl Spooled {
    /// The next batch, or `None` at the end.
    pub(crate) fn next_batch(&mut self) -> Result<Option<Vec<PersonRecord>>, StoreError> {
        let input = &mut self.input;
        let mut count = [0u8; 4];
        match input.read_exact(&mut count) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io("cannot read it back", e)),
        }
        let count = u32::from_le_bytes(count);
        let mut batch = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 16));
        for _ in 0..count {
            let id = pid(read_u64(input)?)?;
            let birth_date = match read_i32(input)? {
                0 => None,
                n => Some(number_date(n)?),
            };
            let protected = read_u8(input)? != 0;
            let n = read_u8(input)?;
            let guardians = (0..n).map(|_| pid(read_u64(input)?)).collect::<Result<Vec<_>, _>>()?;
            batch.push(PersonRecord {
                id,
                birth_date,
                protected,
                guardians,
            });
        }
        Ok(Some(batch))
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
    fn a_spool_reads_back_what_was_written_and_leaves_nothing() {
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
            spool.write(b).unwrap();
        }
        let mut spooled = spool.finish().unwrap();
        assert_eq!(spooled.records, 2);
        let mut back = Vec::new();
        while let Some(b) = spooled.next_batch().unwrap() {
            back.push(b);
        }
        assert_eq!(back, batches);
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
        spool.write(&[rec]).unwrap();
        spool.out.flush().unwrap();
        // Cut the batch of one short by three bytes.
        let f = spool.out.get_mut();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 3).unwrap();
        let mut spooled = spool.finish().unwrap();
        assert!(matches!(spooled.next_batch(), Err(StoreError::Corrupt(_))));
    }
}
