//! Snapshot files: a folded snapshot written at a checkpoint, read back at
//! start-up (or fetched from a peer) so that a restart does not rebuild 4.7
//! million persons from the store, then brought up to date by replaying the
//! change log after its revision.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "GASNAP\0\x02"                    magic and format version
//! u32 header length, header         postcard: store id, revision, age settings, section lengths
//! u32 CRC-32 of the header          checked before anything is allocated
//! slots                             the population table's 32-byte slots, as they are in memory
//! child offsets, child edges        u32 arrays
//! extra guardians, rules            postcard
//! u32 CRC-32 of everything above
//! 32-byte HMAC-SHA256 of everything above, keyed by the store's snapshot key
//! ```
//!
//! The key is made with the store and kept in its `meta` row, never in a
//! file: a file is used only if this store's key authenticates it, so a
//! file altered on disk or in transit (or handed over by a rogue peer) is
//! refused even when its checksums are right.
//!
//! The population table is plain old data already (`bytemuck`), so it is
//! written and read as bytes, straight into its huge-page mapping: the
//! zero-copy of `rkyv` without a second schema. The small rest uses
//! `postcard`: serde, a documented stable wire format, and maintained
//! (`bincode` is not: RUSTSEC-2025-0141). A file that is truncated, has a
//! flipped bit, or belongs to another store is refused with an error; it is
//! never served.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::identity::Pid;
use crate::core::model::{HsaId, Rule, RuleId, RuleKind, Services, Settings};
use crate::core::people::{GuardianEdge, People, RawPeopleError};
use crate::core::snapshot::{BuildError, Rules, Snapshot};
use crate::core::time::{Instant, LeapDay};

const MAGIC: [u8; 8] = *b"GASNAP\0\x04";
/// Bytes of the authentication tag at the end.
const TAG: usize = 32;

type Mac = hmac::Hmac<sha2::Sha256>;

fn mac(key: &[u8]) -> Result<Mac, SnapFileError> {
    <Mac as hmac::KeyInit>::new_from_slice(key).map_err(|_| SnapFileError::Format("the snapshot key is unusable"))
}
/// No header is anywhere near this; a larger length is corruption.
const MAX_HEADER: u32 = 64 * 1024;

/// Why a snapshot file cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapFileError {
    /// Reading or writing failed.
    #[error("snapshot file i/o: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a snapshot file of this format, or are damaged.
    #[error("snapshot file is damaged or of another format: {0}")]
    Format(&'static str),
    /// The population table in the file is inconsistent.
    #[error(transparent)]
    People(#[from] RawPeopleError),
    /// The snapshot cannot be assembled (e.g. other age settings).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// This store's key does not authenticate it: altered on disk or in
    /// transit, or not made by a node of this store.
    #[error("snapshot file is not authenticated by this store's key")]
    Unauthenticated,
    /// The file was made from another store.
    #[error("snapshot file belongs to another store")]
    OtherStore,
    /// Only folded snapshots are written.
    #[error("only a folded snapshot (empty overlay) can be written")]
    NotFolded,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    store_id: String,
    revision: u64,
    guardian_age_limit: u8,
    own_journal_age: u8,
    leap_day: u8,
    slot_bytes: u64,
    child_offsets: u64,
    child_edges: u64,
    more_guardians_bytes: u64,
    rules_bytes: u64,
    /// The store's digest of `revision` (its history up to there).
    digest: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileRule {
    id: u64,
    kind: String,
    subject: u64,
    guardian: Option<u64>,
    services: u8,
    valid_from: i64,
    valid_until: Option<i64>,
    lifted_at: Option<i64>,
    care_units: Option<Vec<String>>,
}

impl FileRule {
    fn new(r: &Rule) -> FileRule {
        FileRule {
            id: r.id.0,
            kind: r.kind.as_str().to_owned(),
            subject: r.subject.get(),
            guardian: r.guardian.map(Pid::get),
            services: r.services.bits(),
            valid_from: r.valid_from.as_nanos(),
            valid_until: r.valid_until.map(Instant::as_nanos),
            lifted_at: r.lifted_at.map(Instant::as_nanos),
            care_units: r
                .care_units
                .as_ref()
                .map(|u| u.iter().map(|h| h.as_str().to_owned()).collect()),
        }
    }

    fn rule(self) -> Result<Rule, SnapFileError> {
        let bad = |what| SnapFileError::Format(what);
        Ok(Rule {
            id: RuleId(self.id),
            kind: RuleKind::parse(&self.kind).ok_or(bad("a rule has an unknown kind"))?,
            subject: Pid::from_u64(self.subject).map_err(|_| bad("a rule has an invalid subject"))?,
            guardian: self
                .guardian
                .map(Pid::from_u64)
                .transpose()
                .map_err(|_| bad("a rule has an invalid guardian"))?,
            services: Services::from_bits(self.services).ok_or(bad("a rule has unknown services"))?,
            valid_from: Instant::from_nanos(self.valid_from),
            valid_until: self.valid_until.map(Instant::from_nanos),
            lifted_at: self.lifted_at.map(Instant::from_nanos),
            care_units: match self.care_units {
                None => None,
                Some(units) => Some(
                    units
                        .iter()
                        .map(|u| HsaId::parse(u))
                        .collect::<Result<Arc<[HsaId]>, _>>()
                        .map_err(|_| bad("a rule has an invalid care unit"))?,
                ),
            },
        })
    }
}

fn leap_code(l: LeapDay) -> u8 {
    match l {
        LeapDay::Feb28 => 0,
        LeapDay::Mar1 => 1,
    }
}

/// A writer that keeps the CRC-32 of what passes through it.
struct Crc<W> {
    inner: W,
    crc: crc32fast::Hasher,
    mac: Option<Mac>,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        if let Some(m) = &mut self.mac {
            hmac::Mac::update(m, &buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The running checksum and authentication code of what was read.
struct Sums {
    crc: crc32fast::Hasher,
    mac: Option<Mac>,
}

impl Sums {
    fn new(mac: Option<Mac>) -> Sums {
        Sums {
            crc: crc32fast::Hasher::new(),
            mac,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        if let Some(m) = &mut self.mac {
            hmac::Mac::update(m, bytes);
        }
    }
}

fn u32s(v: &[u32]) -> impl Iterator<Item = [u8; 4]> + '_ {
    v.iter().map(|x| x.to_le_bytes())
}

/// Writes `snap` (which must be folded) to `path` atomically: a temporary
/// file beside it, synced, then renamed over it, then the directory synced.
/// A crash leaves the old file or the new one, never a mix.
pub fn write(
    path: &Path,
    snap: &Snapshot,
    store_id: &str,
    key: &[u8],
    digest: Option<&str>,
) -> Result<u64, SnapFileError> {
    let raw = snap.people().raw().ok_or(SnapFileError::NotFolded)?;
    if snap.rules().overlay_len() != 0 {
        return Err(SnapFileError::NotFolded);
    }
    let more: Vec<(u64, Vec<u64>)> = raw
        .more_guardians
        .iter()
        .map(|(k, v)| (*k, v.iter().map(|e| e.raw()).collect()))
        .collect();
    let more = postcard::to_stdvec(&more).map_err(|_| SnapFileError::Format("cannot encode guardians"))?;
    let rules: Vec<FileRule> = snap.rules().iter().map(FileRule::new).collect();
    let rules = postcard::to_stdvec(&rules).map_err(|_| SnapFileError::Format("cannot encode rules"))?;
    let slot_bytes: &[u8] = bytemuck::cast_slice(raw.slots);
    let header = Header {
        store_id: store_id.to_owned(),
        revision: snap.revision(),
        guardian_age_limit: raw.limits.0,
        own_journal_age: raw.limits.1,
        leap_day: leap_code(raw.limits.2),
        slot_bytes: slot_bytes.len() as u64,
        child_offsets: raw.child_offsets.len() as u64,
        child_edges: raw.child_edges.len() as u64,
        more_guardians_bytes: more.len() as u64,
        rules_bytes: rules.len() as u64,
        digest: digest.map(str::to_owned),
    };
    let header = postcard::to_stdvec(&header).map_err(|_| SnapFileError::Format("cannot encode the header"))?;
    let tmp = temp_path(path);
    let edges = (raw.child_offsets, raw.child_edges);
    let written = write_file(&tmp, path, key, &header, slot_bytes, edges, &more, &rules);
    if written.is_err() {
        // A full disk or another failure: the old file stays as it was and
        // nothing half-written is left behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes the file at `tmp`, syncs it and renames it over `path`.
#[allow(clippy::too_many_arguments)]
fn write_file(
    tmp: &Path,
    path: &Path,
    key: &[u8],
    header: &[u8],
    slot_bytes: &[u8],
    edges: (&[u32], &[u32]),
    more: &[u8],
    rules: &[u8],
) -> Result<u64, SnapFileError> {
    // Only the service's user reads it: it holds the whole population.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    let mut out = Crc {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        mac: Some(mac(key)?),
    };
    out.write_all(&MAGIC)?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(header)?;
    out.write_all(&crc32fast::hash(header).to_le_bytes())?;
    out.write_all(slot_bytes)?;
    for b in u32s(edges.0).chain(u32s(edges.1)) {
        out.write_all(&b)?;
    }
    out.write_all(more)?;
    out.write_all(rules)?;
    let crc = out.crc.finalize().to_le_bytes();
    let mut tag = out.mac.take().ok_or(SnapFileError::Format("no key"))?;
    hmac::Mac::update(&mut tag, &crc);
    let mut inner = out.inner;
    inner.write_all(&crc)?;
    inner.write_all(&hmac::Mac::finalize(tag).into_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?
        .sync_all()?;
    }
    Ok(size)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// What a snapshot file says about itself, read without loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The store it was made from.
    pub store_id: String,
    /// The revision it holds.
    pub revision: u64,
}

/// Reads and checks only the header of the file at `path`.
pub fn info(path: &Path) -> Result<FileInfo, SnapFileError> {
    let mut r = BufReader::new(File::open(path)?);
    let h = read_header(&mut r, &mut Sums::new(None))?;
    Ok(FileInfo {
        store_id: h.store_id,
        revision: h.revision,
    })
}

fn read_exact_crc(r: &mut impl Read, crc: &mut Sums, buf: &mut [u8]) -> Result<(), SnapFileError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapFileError::Format("the file is truncated"),
        _ => SnapFileError::Io(e),
    })?;
    crc.update(buf);
    Ok(())
}

fn read_header(r: &mut impl Read, crc: &mut Sums) -> Result<Header, SnapFileError> {
    let mut magic = [0u8; 8];
    read_exact_crc(r, crc, &mut magic)?;
    if magic != MAGIC {
        return Err(SnapFileError::Format("not a snapshot file of this version"));
    }
    let mut len = [0u8; 4];
    read_exact_crc(r, crc, &mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(SnapFileError::Format("the header length is implausible"));
    }
    let mut header = vec![0u8; len as usize];
    read_exact_crc(r, crc, &mut header)?;
    let mut check = [0u8; 4];
    read_exact_crc(r, crc, &mut check)?;
    if u32::from_le_bytes(check) != crc32fast::hash(&header) {
        return Err(SnapFileError::Format("the header checksum does not match"));
    }
    postcard::from_bytes(&header).map_err(|_| SnapFileError::Format("the header cannot be decoded"))
}

/// Reads the snapshot file at `path`, made from store `store_id`, and
/// assembles it with `settings` (whose age limits must be the file's).
pub fn read(path: &Path, store_id: &str, key: &[u8], settings: Arc<Settings>) -> Result<Snapshot, SnapFileError> {
    read_with_digest(path, store_id, key, settings).map(|(s, _)| s)
}

/// [`read`], with the store's digest of the file's revision as the file
/// (authenticated) records it: the history the snapshot was made from.
pub fn read_with_digest(
    path: &Path,
    store_id: &str,
    key: &[u8],
    settings: Arc<Settings>,
) -> Result<(Snapshot, Option<String>), SnapFileError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut crc = Sums::new(Some(mac(key)?));
    let h = read_header(&mut r, &mut crc)?;
    if h.store_id != store_id {
        return Err(SnapFileError::OtherStore);
    }
    let leap = match h.leap_day {
        0 => LeapDay::Feb28,
        1 => LeapDay::Mar1,
        _ => return Err(SnapFileError::Format("unknown leap-day setting")),
    };
    if (h.guardian_age_limit, h.own_journal_age, leap)
        != (settings.guardian_age_limit, settings.own_journal_age, settings.leap_day)
    {
        return Err(BuildError::SettingsMismatch.into());
    }
    // Every section must fit in the file exactly: a damaged length is caught
    // here, before anything that size is allocated.
    let body = [
        h.slot_bytes,
        h.child_offsets.saturating_mul(4),
        h.child_edges.saturating_mul(4),
        h.more_guardians_bytes,
        h.rules_bytes,
    ]
    .iter()
    .try_fold(0u64, |a, b| a.checked_add(*b))
    .ok_or(SnapFileError::Format("section lengths overflow"))?;
    let header_len = 8 + 4 + postcard::to_stdvec(&h).map_or(0, |v| v.len() as u64) + 4;
    if header_len.checked_add(body).and_then(|n| n.checked_add(4 + TAG as u64)) != Some(size) {
        return Err(SnapFileError::Format("the file length does not match its header"));
    }

    let limits = (h.guardian_age_limit, h.own_journal_age, leap);
    let slot_len = usize::try_from(h.slot_bytes).map_err(|_| SnapFileError::Format("too large"))?;
    let slots = People::slots_from(slot_len, |dst| read_exact_crc(&mut r, &mut crc, dst))?;
    let mut read_u32s = |n: u64| -> Result<Vec<u32>, SnapFileError> {
        let mut bytes = vec![0u8; n as usize * 4];
        read_exact_crc(&mut r, &mut crc, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let child_offsets = read_u32s(h.child_offsets)?;
    let child_edges = read_u32s(h.child_edges)?;
    let mut more = vec![0u8; h.more_guardians_bytes as usize];
    read_exact_crc(&mut r, &mut crc, &mut more)?;
    let mut rules = vec![0u8; h.rules_bytes as usize];
    read_exact_crc(&mut r, &mut crc, &mut rules)?;
    let mut check = [0u8; 4];
    r.read_exact(&mut check)
        .map_err(|_| SnapFileError::Format("the file is truncated"))?;
    let Sums { crc, mac } = crc;
    if u32::from_le_bytes(check) != crc.finalize() {
        return Err(SnapFileError::Format("the checksum does not match"));
    }
    let mut tag = [0u8; TAG];
    r.read_exact(&mut tag)
        .map_err(|_| SnapFileError::Format("the file is truncated"))?;
    let mut mac = mac.ok_or(SnapFileError::Format("no key"))?;
    hmac::Mac::update(&mut mac, &check);
    hmac::Mac::verify_slice(mac, &tag).map_err(|_| SnapFileError::Unauthenticated)?;

    let more: Vec<(u64, Vec<u64>)> =
        postcard::from_bytes(&more).map_err(|_| SnapFileError::Format("the guardians cannot be decoded"))?;
    let more = more
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(GuardianEdge::from_raw).collect()))
        .collect();
    let people = People::from_raw(slots, child_offsets, child_edges, more, limits)?;
    let rules: Vec<FileRule> =
        postcard::from_bytes(&rules).map_err(|_| SnapFileError::Format("the rules cannot be decoded"))?;
    let rules = rules.into_iter().map(FileRule::rule).collect::<Result<Vec<_>, _>>()?;
    let snap = Snapshot::new(h.revision, settings, Arc::new(people), Arc::new(Rules::new(rules)))?;
    Ok((snap, h.digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::Scenario;

    fn demo() -> Snapshot {
        Scenario::demo().unwrap().snapshot().unwrap()
    }

    fn settings() -> Arc<Settings> {
        Arc::new(demo().settings().clone())
    }

    const KEY: &[u8] = b"a test key of thirty-two bytes!!";

    #[test]
    fn a_written_file_reads_back_with_the_same_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot");
        let snap = demo();
        write(&path, &snap, "store-a", KEY, Some("abc123")).unwrap();
        assert_eq!(
            info(&path).unwrap(),
            FileInfo {
                store_id: "store-a".into(),
                revision: 1
            }
        );
        let (back, digest) = read_with_digest(&path, "store-a", KEY, settings()).unwrap();
        assert_eq!(digest.as_deref(), Some("abc123"), "the history it was made from");
        assert_eq!(back.revision(), snap.revision());
        assert_eq!(back.people().len(), snap.people().len());
        assert_eq!(back.people().links(), snap.people().links());
        assert_eq!(back.rules().len(), snap.rules().len());
        let scenario = Scenario::demo().unwrap();
        for case in &scenario.cases {
            let q = case.query(snap.tz()).unwrap();
            assert_eq!(crate::decide(&back, &q), crate::decide(&snap, &q), "{}", case.name);
        }
        assert!(!temp_path(&path).exists(), "the temporary file was renamed");
    }

    #[test]
    fn damage_anywhere_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot");
        write(&path, &demo(), "store-a", KEY, None).unwrap();
        let good = std::fs::read(&path).unwrap();
        // A flipped bit at every 97th byte, and a cut at several lengths.
        for i in (0..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(read(&path, "store-a", KEY, settings()).is_err(), "bit flipped at {i}");
        }
        for cut in [0, 7, 20, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(read(&path, "store-a", KEY, settings()).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(read(&path, "store-a", KEY, settings()).is_err(), "trailing bytes");
        std::fs::write(&path, &good).unwrap();
        assert!(matches!(
            read(&path, "store-b", KEY, settings()),
            Err(SnapFileError::OtherStore)
        ));
        let other = Arc::new(Settings {
            guardian_age_limit: 12,
            ..(*settings()).clone()
        });
        assert!(matches!(
            read(&path, "store-a", KEY, other),
            Err(SnapFileError::Build(BuildError::SettingsMismatch))
        ));
        assert!(read(&path, "store-a", KEY, settings()).is_ok());
    }

    /// A protected flag flipped in the population table with every checksum
    /// put right, as someone editing the file would: the key refuses it, and
    /// another store's key refuses a good file.
    #[test]
    fn only_this_stores_key_authenticates_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot");
        write(&path, &demo(), "store-a", KEY, None).unwrap();
        let good = std::fs::read(&path).unwrap();
        let header_len = u32::from_le_bytes(good[8..12].try_into().unwrap()) as usize;
        let slots = 8 + 4 + header_len + 4;
        // The first slot's key: the PROTECTED flag is its top bit.
        let key_byte = (0..good.len() - slots)
            .step_by(32)
            .map(|i| slots + i)
            .find(|&at| good[at..at + 8] != [0; 8])
            .unwrap()
            + 7;
        let mut forged = good.clone();
        forged[key_byte] ^= 0x80;
        let body_end = forged.len() - TAG - 4;
        let crc = crc32fast::hash(&forged[..body_end]).to_le_bytes();
        forged[body_end..body_end + 4].copy_from_slice(&crc);
        std::fs::write(&path, &forged).unwrap();
        assert!(
            matches!(
                read(&path, "store-a", KEY, settings()),
                Err(SnapFileError::Unauthenticated)
            ),
            "a forged file with right checksums is refused"
        );
        std::fs::write(&path, &good).unwrap();
        assert!(matches!(
            read(&path, "store-a", b"another store's key, 32 bytes!!!", settings()),
            Err(SnapFileError::Unauthenticated)
        ));
        assert!(read(&path, "store-a", KEY, settings()).is_ok());
    }

    /// Even a file the key authenticates (a bug of our own, say) is checked:
    /// a guardian edge whose protected flag disagrees with the guardian's
    /// own record is refused.
    #[test]
    fn edges_must_agree_with_the_guardians_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot");
        write(&path, &demo(), "store-a", KEY, None).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let slots = 8 + 4 + header_len + 4;
        let h = info(&path).unwrap();
        assert_eq!(h.store_id, "store-a");
        // The first slot with a guardian: its first edge is bytes 16..24.
        let edge = (slots..bytes.len() - TAG - 4)
            .step_by(32)
            .find(|&at| bytes[at..at + 8] != [0; 8] && bytes[at + 16..at + 24] != [0; 8])
            .unwrap()
            + 16;
        bytes[edge + 7] ^= 0x80;
        let body_end = bytes.len() - TAG - 4;
        let crc = crc32fast::hash(&bytes[..body_end]).to_le_bytes();
        bytes[body_end..body_end + 4].copy_from_slice(&crc);
        let mut tag = mac(KEY).unwrap();
        hmac::Mac::update(&mut tag, &bytes[..body_end + 4]);
        let tag = hmac::Mac::finalize(tag).into_bytes();
        bytes[body_end + 4..].copy_from_slice(&tag);
        std::fs::write(&path, &bytes).unwrap();
        let e = read(&path, "store-a", KEY, settings()).unwrap_err();
        assert!(matches!(e, SnapFileError::People(_)), "{e}");
        assert!(e.to_string().contains("protection"), "{e}");
    }

    #[test]
    fn only_folded_snapshots_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let snap = demo();
        let rule = snap.rules().iter().next().unwrap().clone();
        let changed = snap.apply(2, &[], &[rule]).unwrap();
        assert!(matches!(
            write(&dir.path().join("s"), &changed, "x", KEY, None),
            Err(SnapFileError::NotFolded)
        ));
        write(&dir.path().join("s"), &changed.fold().unwrap(), "x", KEY, None).unwrap();
    }
}
