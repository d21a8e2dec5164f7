//! A segment log: a directory of append-only files of checksummed records.
//!
//! ```text
//!  <dir>/00000000000000000001.seg   record | record | record ...
//!  <dir>/00000000000000000002.seg   record | ...            <- active (appended to)
//!
//!  record = length: u32 BE | crc32 of payload: u32 BE | payload
//! ```
//!
//! A [`Position`] names a record: segment, offset of its header, payload length. Writing goes
//! through [`SegmentWriter`] (one owner: the WAL's writer thread); reading by position goes through
//! [`SegmentReader`] (shared, positioned reads, so readers never wait for the writer).
//!
//! Recovery ([`SegmentWriter::open`] with a scan): every record's length and checksum are checked.
//! A record that is cut short or fails its checksum at the tail of the newest segment is a torn
//! write: the file is truncated before it, and it is never served. The same in an older segment
//! is corruption: the rest of that segment is skipped and reported.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::StorageError;

/// Bytes before each record's payload.
pub const RECORD_HEADER: u32 = 8;

/// Where a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Segment number.
    pub segment: u32,
    /// Offset of the record header within the segment.
    pub offset: u32,
    /// Payload length.
    pub length: u32,
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

fn list_segments(dir: &Path) -> Result<Vec<u32>, StorageError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|error| StorageError::io("list", dir, error))? {
        let entry = entry.map_err(|error| StorageError::io("list", dir, error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_suffix(".seg")
            .and_then(|stem| stem.parse::<u32>().ok())
        {
            segments.push(number);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// What a scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Valid records read.
    pub records: u64,
    /// Bytes cut from the tail of the newest segment (a torn write).
    pub truncated_bytes: u64,
    /// Older segments with a damaged record, and the offset where reading stopped.
    pub corrupt: Vec<(u32, u32)>,
}

/// Buffered bytes that are written out without waiting for the end of the batch.
const FLUSH_AT: usize = 64 * 1024;

/// The appending side of a segment log.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    max_segment_size: u32,
    active: u32,
    file: File,
    length: u32,
    /// Bytes appended but not yet written to the file.
    buffer: Vec<u8>,
    /// Length of the active segment when the current batch began (the last [`Self::write`]): a
    /// failed write cuts the file back to it, so that a batch reaches the file whole or not at all.
    batch_start: u32,
    /// The error of a piece of the current batch that failed: the rest of the batch is refused
    /// and cut too, so that nothing of a batch reported failed stays in the file.
    failed: Option<std::io::ErrorKind>,
    /// Segments written to since the last sync (the active one and any just rolled over).
    unsynced: Vec<u32>,
    rolled: Vec<File>,
}

impl SegmentWriter {
    /// Opens (creating if needed) the log in `dir`, scanning every existing record first:
    /// `visit` sees each valid record in order; a torn tail is truncated.
    pub fn open(
        dir: &Path,
        max_segment_size: u32,
        mut visit: impl FnMut(Position, &[u8]),
    ) -> Result<(SegmentWriter, ScanReport), StorageError> {
        std::fs::create_dir_all(dir).map_err(|error| StorageError::io("create", dir, error))?;
        let segments = list_segments(dir)?;
        let mut report = ScanReport::default();
        let mut tail_length = 0;
        for (index, segment) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            let path = segment_path(dir, *segment);
            let valid = scan_file(&path, *segment, &mut visit, &mut report)?;
            let size = std::fs::metadata(&path)
                .map_err(|error| StorageError::io("stat", &path, error))?
                .len();
            if u64::from(valid) < size {
                if last {
                    report.truncated_bytes = size - u64::from(valid);
                    tracing::warn!(
                        "{}: cutting {} bytes of torn or corrupt records from the end",
                        path.display(),
                        report.truncated_bytes
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|error| StorageError::io("open", &path, error))?;
                    file.set_len(u64::from(valid))
                        .map_err(|error| StorageError::io("truncate", &path, error))?;
                    file.sync_all()
                        .map_err(|error| StorageError::io("sync", &path, error))?;
                } else {
                    tracing::error!(
                        "{}: damaged record at offset {valid}; the rest of this segment is skipped",
                        path.display()
                    );
                    report.corrupt.push((*segment, valid));
                }
            }
            if last {
                tail_length = valid;
            }
        }
        let (active, length) = match segments.last() {
            Some(last) if tail_length < max_segment_size => (*last, tail_length),
            Some(last) => (last + 1, 0),
            None => (1, 0),
        };
        let path = segment_path(dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|error| StorageError::io("open", &path, error))?;
        if length == 0 {
            sync_dir(dir)?;
        }
        Ok((
            SegmentWriter {
                dir: dir.to_path_buf(),
                max_segment_size,
                active,
                file,
                length,
                buffer: Vec::with_capacity(FLUSH_AT + 64 * 1024),
                batch_start: length,
                failed: None,
                unsynced: Vec::new(),
                rolled: Vec::new(),
            },
            report,
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being appended to.
    pub fn active_segment(&self) -> u32 {
        self.active
    }

    /// Appends a record (buffered until [`SegmentWriter::write`]); returns where it will be.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, StorageError> {
        let length =
            u32::try_from(payload.len()).map_err(|_| StorageError::TooLarge(payload.len()))?;
        if let Some(kind) = self.failed {
            return Err(self.batch_failed(kind));
        }
        let size = RECORD_HEADER + length;
        if self.length > 0 && self.length.saturating_add(size) > self.max_segment_size {
            self.roll()?;
        }
        let position = Position {
            segment: self.active,
            offset: self.length,
            length,
        };
        self.buffer.extend_from_slice(&length.to_be_bytes());
        self.buffer
            .extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
        self.buffer.extend_from_slice(payload);
        self.length += size;
        if self.unsynced.last() != Some(&self.active) {
            self.unsynced.push(self.active);
        }
        if self.buffer.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(position)
    }

    fn roll(&mut self) -> Result<(), StorageError> {
        self.write()?;
        let next = self.active + 1;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|error| StorageError::io("open", &path, error))?;
        let previous = std::mem::replace(&mut self.file, file);
        self.rolled.push(previous);
        self.active = next;
        self.length = 0;
        self.batch_start = 0;
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Writes buffered records to the file (no sync) and ends the batch.
    pub fn write(&mut self) -> Result<(), StorageError> {
        let result = match self.failed {
            // The failed piece already cut the file back, and the rest of the batch was refused.
            Some(kind) => Err(self.batch_failed(kind)),
            None => self.flush(),
        };
        // The next batch starts afresh, whether this one was written or failed.
        self.failed = None;
        self.batch_start = self.length;
        result
    }

    /// The error for the rest of a batch after one of its pieces failed with `kind`.
    fn batch_failed(&self, kind: std::io::ErrorKind) -> StorageError {
        StorageError::io("write", &segment_path(&self.dir, self.active), kind.into())
    }

    /// Writes the buffer to the file. A big batch goes out in pieces of about [`FLUSH_AT`]
    /// bytes, while each piece is still in the CPU's cache: the kernel's copy into the page
    /// cache is then several times cheaper than for one cold multi-megabyte buffer.
    fn flush(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let path = segment_path(&self.dir, self.active);
        let result = self.file.write_all(&self.buffer);
        self.buffer.clear();
        if let Err(error) = result {
            // Nothing of this batch counts as written: cut what may have reached the file, so
            // that the next batch starts at a record boundary.
            let _ = self.file.set_len(u64::from(self.batch_start));
            self.length = self.batch_start;
            self.failed = Some(error.kind());
            return Err(StorageError::io("write", &path, error));
        }
        Ok(())
    }

    /// Writes buffered records and makes everything written so far durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.write()?;
        for file in self.rolled.drain(..) {
            file.sync_data()
                .map_err(|error| StorageError::io("sync", &self.dir, error))?;
        }
        if !self.unsynced.is_empty() {
            self.file.sync_data().map_err(|error| {
                StorageError::io("sync", &segment_path(&self.dir, self.active), error)
            })?;
            self.unsynced.clear();
        }
        Ok(())
    }

    /// Deletes every segment numbered below `segment` (never the active one).
    pub fn delete_before(&mut self, segment: u32) -> Result<Vec<u32>, StorageError> {
        let mut deleted = Vec::new();
        for existing in list_segments(&self.dir)? {
            if existing >= segment || existing >= self.active {
                break;
            }
            let path = segment_path(&self.dir, existing);
            std::fs::remove_file(&path)
                .map_err(|error| StorageError::io("delete", &path, error))?;
            deleted.push(existing);
        }
        Ok(deleted)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| StorageError::io("sync", dir, error))
}

/// Reads `path` record by record; returns the length of its valid prefix.
fn scan_file(
    path: &Path,
    segment: u32,
    visit: &mut impl FnMut(Position, &[u8]),
    report: &mut ScanReport,
) -> Result<u32, StorageError> {
    let mut file = File::open(path).map_err(|error| StorageError::io("open", path, error))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|error| StorageError::io("read", path, error))?;
    let mut offset = 0usize;
    while offset + RECORD_HEADER as usize <= data.len() {
        let length =
            u32::from_be_bytes(data[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        let checksum =
            u32::from_be_bytes(data[offset + 4..offset + 8].try_into().expect("4 bytes"));
        let start = offset + RECORD_HEADER as usize;
        if length == 0 || start + length > data.len() {
            break;
        }
        let payload = &data[start..start + length];
        if crc32fast::hash(payload) != checksum {
            break;
        }
        visit(
            Position {
                segment,
                offset: offset as u32,
                length: length as u32,
            },
            payload,
        );
        report.records += 1;
        offset = start + length;
    }
    Ok(offset as u32)
}

/// Reads records by position; cheap to share between threads.
#[derive(Debug)]
pub struct SegmentReader {
    dir: PathBuf,
    files: Mutex<HashMap<u32, Arc<File>>>,
}

impl SegmentReader {
    /// A reader of the log in `dir`.
    pub fn new(dir: &Path) -> SegmentReader {
        SegmentReader {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, segment: u32) -> Result<Arc<File>, StorageError> {
        if let Some(file) = self.files.lock().get(&segment) {
            return Ok(file.clone());
        }
        let path = segment_path(&self.dir, segment);
        let file =
            Arc::new(File::open(&path).map_err(|error| StorageError::io("open", &path, error))?);
        self.files.lock().insert(segment, file.clone());
        Ok(file)
    }

    /// Reads and checks the record at `position`.
    pub fn read(&self, position: Position) -> Result<Bytes, StorageError> {
        let from = u64::from(position.offset);
        let data = self.read_span(
            position.segment,
            from,
            from + u64::from(RECORD_HEADER + position.length),
        )?;
        check_record(data, position)
    }

    /// Reads and checks many records, in the order given. Records that follow each other in a
    /// segment are read with one system call per run (up to 1 MiB), and their payloads are
    /// slices of that read: reading a queue's paged-out messages back costs a few reads, not one
    /// per message.
    pub fn read_many(&self, positions: &[Position]) -> Vec<Result<Bytes, StorageError>> {
        const MAX_SPAN: u64 = 1024 * 1024;
        let mut results: Vec<Option<Result<Bytes, StorageError>>> =
            (0..positions.len()).map(|_| None).collect();
        let mut order: Vec<usize> = (0..positions.len()).collect();
        order.sort_by_key(|index| (positions[*index].segment, positions[*index].offset));
        let mut start = 0;
        while start < order.len() {
            let first = positions[order[start]];
            let mut end = start + 1;
            let mut span_end = u64::from(first.offset) + u64::from(RECORD_HEADER + first.length);
            while end < order.len() {
                let next = positions[order[end]];
                let next_end = u64::from(next.offset) + u64::from(RECORD_HEADER + next.length);
                if next.segment != first.segment
                    || u64::from(next.offset) != span_end
                    || next_end - u64::from(first.offset) > MAX_SPAN
                {
                    break;
                }
                span_end = next_end;
                end += 1;
            }
            let span = self.read_span(first.segment, u64::from(first.offset), span_end);
            for &index in &order[start..end] {
                let position = positions[index];
                results[index] = Some(match &span {
                    Ok(data) => {
                        let at = (u64::from(position.offset) - u64::from(first.offset)) as usize;
                        check_record(
                            data.slice(at..at + (RECORD_HEADER + position.length) as usize),
                            position,
                        )
                    }
                    Err(error) => Err(StorageError::io(
                        "read",
                        &segment_path(&self.dir, position.segment),
                        std::io::Error::other(error.to_string()),
                    )),
                });
            }
            start = end;
        }
        results
            .into_iter()
            .map(|result| result.expect("invariant: every position was read"))
            .collect()
    }

    fn read_span(&self, segment: u32, from: u64, to: u64) -> Result<Bytes, StorageError> {
        let file = self.file(segment)?;
        let mut data = vec![0u8; (to - from) as usize];
        file.read_exact_at(&mut data, from)
            .map_err(|error| StorageError::io("read", &segment_path(&self.dir, segment), error))?;
        Ok(Bytes::from(data))
    }

    /// Forgets open files of deleted segments.
    pub fn forget(&self, segments: &[u32]) {
        let mut files = self.files.lock();
        for segment in segments {
            files.remove(segment);
        }
    }
}

/// The payload of a record read whole (header included), if its length and checksum hold.
fn check_record(data: Bytes, position: Position) -> Result<Bytes, StorageError> {
    let length = u32::from_be_bytes(data[0..4].try_into().expect("4 bytes"));
    let checksum = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
    let payload = data.slice(RECORD_HEADER as usize..);
    if length != position.length || crc32fast::hash(&payload) != checksum {
        return Err(StorageError::Corrupt {
            segment: position.segment,
            offset: position.offset,
        });
    }
    Ok(payload)
}

/// Whether an I/O error means the disk is full.
pub fn is_no_space(error: &std::io::Error) -> bool {
    error.kind() == ErrorKind::StorageFull || error.raw_os_error() == Some(28)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("warren-segment-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn reopen(dir: &Path, max: u32) -> (SegmentWriter, ScanReport, Vec<(Position, Vec<u8>)>) {
        let mut seen = Vec::new();
        let (writer, report) = SegmentWriter::open(dir, max, |position, payload| {
            seen.push((position, payload.to_vec()))
        })
        .unwrap();
        (writer, report, seen)
    }

    #[test]
    fn append_sync_reopen_and_read_by_position() {
        let dir = temp_dir("basic");
        let (mut writer, _, seen) = reopen(&dir, 100);
        assert!(seen.is_empty());
        let mut positions = Vec::new();
        for i in 0..20u8 {
            positions.push(writer.append(&[i; 10]).unwrap());
        }
        writer.sync().unwrap();
        // 18-byte records in 100-byte segments: several segments.
        assert!(writer.active_segment() > 1);
        let reader = SegmentReader::new(&dir);
        for (i, position) in positions.iter().enumerate() {
            assert_eq!(&reader.read(*position).unwrap()[..], &[i as u8; 10]);
        }
        // Many at once, out of order and across segments: adjacent records share one read.
        let mut shuffled: Vec<(usize, Position)> = positions.iter().copied().enumerate().collect();
        shuffled.reverse();
        shuffled.swap(3, 11);
        let read = reader.read_many(
            &shuffled
                .iter()
                .map(|(_, position)| *position)
                .collect::<Vec<_>>(),
        );
        for ((i, _), payload) in shuffled.iter().zip(read) {
            assert_eq!(&payload.unwrap()[..], &[*i as u8; 10]);
        }
        // A damaged record fails alone.
        let mut bad = positions[5];
        bad.length += 1;
        let read = reader.read_many(&[positions[4], bad, positions[6]]);
        assert!(read[0].is_ok() && read[1].is_err() && read[2].is_ok());
        drop(writer);
        let (mut writer, report, seen) = reopen(&dir, 100);
        assert_eq!(report.records, 20);
        assert_eq!(
            seen.iter()
                .map(|(position, _)| *position)
                .collect::<Vec<_>>(),
            positions
        );
        // Appending continues where it stopped.
        let next = writer.append(b"more").unwrap();
        assert!(next > *positions.last().unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn torn_and_bit_flipped_tails_are_cut_and_never_served() {
        let dir = temp_dir("torn");
        let (mut writer, _, _) = reopen(&dir, 1 << 20);
        for i in 0..5u8 {
            writer.append(&[i; 100]).unwrap();
        }
        writer.sync().unwrap();
        let path = segment_path(&dir, writer.active_segment());
        drop(writer);
        // A torn write: half a record at the end.
        let size = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(size - 50).unwrap();
        let (writer, report, seen) = reopen(&dir, 1 << 20);
        assert_eq!((seen.len(), report.truncated_bytes), (4, 58));
        drop(writer);
        // A flipped bit in the last record's payload.
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 10;
        data[last] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        let (_, report, seen) = reopen(&dir, 1 << 20);
        assert_eq!((seen.len(), report.truncated_bytes), (3, 108));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * 108);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corruption_in_an_older_segment_is_reported_and_reading_goes_on() {
        let dir = temp_dir("corrupt");
        // Two 28-byte records per segment.
        let (mut writer, _, _) = reopen(&dir, 60);
        for i in 0..6u8 {
            writer.append(&[i; 20]).unwrap();
        }
        writer.sync().unwrap();
        drop(writer);
        let first = segment_path(&dir, 1);
        let mut data = std::fs::read(&first).unwrap();
        data[10] ^= 1;
        std::fs::write(&first, &data).unwrap();
        let (_, report, seen) = reopen(&dir, 60);
        assert_eq!(report.corrupt, vec![(1, 0)]);
        assert_eq!(
            seen.len(),
            4,
            "the damaged segment's records are skipped, the others read"
        );
        let reader = SegmentReader::new(&dir);
        assert!(matches!(
            reader.read(Position {
                segment: 1,
                offset: 0,
                length: 20
            }),
            Err(StorageError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn old_segments_are_deleted_but_never_the_active_one() {
        let dir = temp_dir("delete");
        let (mut writer, _, _) = reopen(&dir, 50);
        for i in 0..6u8 {
            writer.append(&[i; 20]).unwrap();
        }
        writer.sync().unwrap();
        let active = writer.active_segment();
        let deleted = writer.delete_before(u32::MAX).unwrap();
        assert_eq!(deleted, (1..active).collect::<Vec<_>>());
        assert_eq!(list_segments(&dir).unwrap(), vec![active]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
