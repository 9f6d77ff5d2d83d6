//! Encryption at rest: sealed files that still allow range reads and crash recovery.
//!
//! Every file gets its own random 256-bit data key. The data key is stored in the file's
//! header, wrapped with AES-256-GCM under the [`MasterKey`]; the plaintext is cut into
//! chunks of a fixed size, and each chunk is sealed with AES-256-GCM under the data key with
//! a fresh random nonce. Chunks sit at fixed offsets, so any byte range can be read by
//! decrypting only the chunks it touches, and a crash can only damage the chunks written
//! after the last [`SealedWriter::flush`].
//!
//! # Master key file
//!
//! 64 hexadecimal digits (the 32 key bytes), optionally followed by ASCII whitespace such as
//! a newline. [`MasterKey::create`] writes a new random key with mode `0600` and never
//! overwrites an existing file.
//!
//! # Sealed file format (version 1)
//!
//! Integers are little-endian. The header:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `MRSEALED` |
//! | 8 | 2 | version, `1` |
//! | 10 | 4 | chunk size `C`: plaintext bytes per chunk, 1 to [`MAX_CHUNK_SIZE`] |
//! | 14 | 2 | context length `n`, at most [`MAX_CONTEXT_LEN`] |
//! | 16 | n | context: the file id given by the caller, e.g. recording id and track name |
//! | 16 + n | 12 | nonce of the wrapped data key |
//! | 28 + n | 48 | the 32-byte data key sealed under the master key, then its 16-byte tag |
//!
//! The header is `76 + n` bytes long (`H`). The data key's additional authenticated data
//! (AAD) is the header's first `16 + n` bytes (magic, version, chunk size and context), so
//! any change to the header makes unwrapping fail, as does a wrong master key.
//!
//! Chunk `i` starts at `H + i * (C + 28)` and is `[12-byte nonce][ciphertext][16-byte tag]`.
//! Every chunk holds `C` plaintext bytes except the last, which holds 0 to `C` bytes (0 only
//! when the whole file is empty). Its AAD is 41 bytes: the SHA-256 of the whole header, the
//! chunk index as a u64, and a final flag byte: 1 for the last chunk of a finished file, 0
//! otherwise. So a chunk cannot be moved, swapped, taken from another file or cut off the end
//! of a finished file without failing authentication.
//!
//! # Writing, flushing and recovery
//!
//! [`SealedWriter`] keeps the plaintext of the last, incomplete chunk in memory. When a chunk
//! fills up and more data arrives it is sealed and written. [`SealedWriter::flush`] also
//! writes the incomplete chunk (sealed as not final) and `fdatasync`s, so after a crash
//! everything up to the last flush can be read back. Each later rewrite of that chunk, as it
//! grows or when [`SealedWriter::patch`] changes it, uses a fresh random nonce; nonces are
//! never reused. [`SealedWriter::finish`] seals the last chunk as final.
//!
//! A file whose writer did not finish (the process was killed) cannot be opened by
//! [`SealedReader::open`] ([`SealedError::Unfinished`]); [`recover`] makes it whole: it keeps
//! every chunk that authenticates, cuts off the torn tail after the last good one, and seals
//! that one as final. Damage followed by an authentic chunk is tampering or corruption of
//! data that was already synced, not a torn write: recovery then fails with
//! [`SealedError::Authentication`] and changes nothing.
//!
//! Limits: recovery cannot tell a tampered tail from a torn write (nothing authentic follows
//! either); the recordings index, which keeps each finished file's length and digest, covers
//! that. [`SealedWriter::patch`] rewrites chunks in place: a power loss in the middle of that
//! rewrite can leave the chunk unreadable (reported as an authentication error, never as
//! garbage). A file has a single writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{self, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// The first 8 bytes of every sealed file.
pub const MAGIC: &[u8; 8] = b"MRSEALED";
/// The version of the sealed file format this module writes and reads.
pub const VERSION: u16 = 1;
/// Plaintext bytes per chunk used by [`SealedWriter::create`] (64 KiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest accepted chunk size (16 MiB); bounds the memory a reader allocates.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Longest accepted context (file id), in bytes.
pub const MAX_CONTEXT_LEN: usize = 1024;
/// Bytes a chunk takes on disk beyond its plaintext: the nonce and the tag.
pub const CHUNK_OVERHEAD: u64 = (NONCE_LEN + TAG_LEN) as u64;

const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// Header bytes before the context: magic, version, chunk size, context length.
const FIXED_HEADER_LEN: usize = 16;
/// Header bytes after the context: the key nonce and the wrapped key with its tag.
const WRAPPED_KEY_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
/// Longest key file [`MasterKey::load`] reads: 64 hex digits and some whitespace.
const MAX_KEY_FILE_LEN: u64 = 256;

/// Why an operation on a master key or a sealed file failed.
#[derive(thiserror::Error, Debug)]
pub enum SealedError {
    /// An I/O operation on `path` failed (for a key file: missing or unreadable).
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
    /// The master key file does not hold 64 hexadecimal digits.
    #[error("master key file {} is invalid: {reason}", .path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`MasterKey::create`] found a file at the path and left it alone.
    #[error("master key file {} already exists; refusing to overwrite it", .path.display())]
    KeyFileExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The file does not start with the sealed-file magic.
    #[error("not a sealed file (bad magic)")]
    NotSealed,
    /// The file is in a version of the format this code does not read.
    #[error("unsupported sealed file version {0}")]
    UnsupportedVersion(u16),
    /// A header field is out of range, or the file ends inside the header.
    #[error("bad sealed file header: {0}")]
    BadHeader(&'static str),
    /// The data key could not be unwrapped: the master key is wrong or the header was changed.
    #[error("sealed file header does not authenticate: wrong master key or damaged header")]
    HeaderAuthentication,
    /// A chunk failed authentication: it was changed, moved, swapped, truncated or torn.
    #[error("sealed file chunk {chunk} does not authenticate (tampered, truncated or torn)")]
    Authentication {
        /// Index of the chunk, counted from 0.
        chunk: u64,
    },
    /// The file's last chunk authenticates but is not marked final: its writer did not
    /// finish (crash), or whole chunks were cut off its end. [`recover`] repairs a crashed one.
    #[error("sealed file was not finished by its writer; it needs recovery")]
    Unfinished,
    /// The byte range lies outside the plaintext.
    #[error("range {start}..{end} is outside the plaintext of {len} bytes")]
    OutOfRange {
        /// First byte of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
        /// Plaintext length.
        len: u64,
    },
    /// The context is longer than [`MAX_CONTEXT_LEN`] or the chunk size out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// An earlier call failed and left the file in an unknown state; the writer refuses
    /// further calls. [`recover`] the file.
    #[error("the sealed writer failed earlier; recover the file")]
    Poisoned,
}

/// Attaches the path an I/O operation was on to its error.
trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, SealedError>;
}

impl<T> AtPath<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, SealedError> {
        self.map_err(|source| SealedError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The 256-bit master key that wraps the data key of every sealed file.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A master key from its raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey { bytes }
    }

    /// Reads the key file at `path` (64 hex digits, surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<MasterKey, SealedError> {
        let mut text = Vec::new();
        File::open(path)
            .and_then(|file| file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut text))
            .at(path)?;
        let bad = |reason| SealedError::BadKeyFile {
            path: path.to_path_buf(),
            reason,
        };
        if text.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(bad("longer than 64 hex digits"));
        }
        let digits = text.trim_ascii();
        if digits.len() != 2 * KEY_LEN {
            return Err(bad("not 64 hex digits (32 bytes)"));
        }
        let mut bytes = [0; KEY_LEN];
        decode_hex(digits, &mut bytes).ok_or_else(|| bad("not hexadecimal"))?;
        Ok(MasterKey { bytes })
    }

    /// Creates a key file at `path` with a new random key, mode `0600`, synced to disk.
    /// Fails with [`SealedError::KeyFileExists`] if anything exists at `path`.
    pub fn create(path: &Path) -> Result<MasterKey, SealedError> {
        let mut bytes = [0; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealedError::Random)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => SealedError::KeyFileExists {
                    path: path.to_path_buf(),
                },
                _ => SealedError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let mut text = encode_hex(&bytes);
        text.push('\n');
        let written = io::Write::write_all(&mut file, text.as_bytes())
            .and_then(|()| file.sync_all())
            .at(path)
            .and_then(|()| sync_parent_dir(path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(MasterKey { bytes })
    }

    /// The raw key bytes, for deriving other keys (see `audit::audit_key`).
    pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    fn aead_key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).expect("32-byte AES key"))
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    text
}

/// Decodes hex digits (either case) into `out`, which must be exactly half as long.
pub(crate) fn decode_hex(digits: &[u8], out: &mut [u8]) -> Option<()> {
    if digits.len() != out.len() * 2 {
        return None;
    }
    for (pair, byte) in digits.chunks_exact(2).zip(out.iter_mut()) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = (high * 16 + low) as u8;
    }
    Some(())
}

/// `fsync`s the directory holding `path`, so that a file created there survives a crash.
fn sync_parent_dir(path: &Path) -> Result<(), SealedError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

fn random_nonce(rng: &SystemRandom) -> Result<[u8; NONCE_LEN], SealedError> {
    let mut nonce = [0; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| SealedError::Random)?;
    Ok(nonce)
}

/// A file's data key and the layout of its chunks.
struct ChunkCipher {
    key: LessSafeKey,
    header_digest: [u8; 32],
    header_len: u64,
    chunk_size: usize,
    context: Vec<u8>,
}

impl ChunkCipher {
    /// Bytes one full chunk takes on disk.
    fn record_len(&self) -> u64 {
        self.chunk_size as u64 + CHUNK_OVERHEAD
    }

    /// Where chunk `index` starts in the file.
    fn offset(&self, index: u64) -> u64 {
        self.header_len + index * self.record_len()
    }

    fn aad(&self, index: u64, last: bool) -> Aad<[u8; 41]> {
        let mut aad = [0; 41];
        aad[..32].copy_from_slice(&self.header_digest);
        aad[32..40].copy_from_slice(&index.to_le_bytes());
        aad[40] = u8::from(last);
        Aad::from(aad)
    }

    /// Seals `plain` as chunk `index` into `record` (nonce, ciphertext, tag).
    fn seal(
        &self,
        rng: &SystemRandom,
        index: u64,
        last: bool,
        plain: &[u8],
        record: &mut Vec<u8>,
    ) -> Result<(), SealedError> {
        let nonce = random_nonce(rng)?;
        record.clear();
        record.extend_from_slice(&nonce);
        record.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                self.aad(index, last),
                &mut record[NONCE_LEN..],
            )
            .map_err(|_| SealedError::InvalidParameter("chunk too large to seal"))?;
        record.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens the record of chunk `index` in place; returns the plaintext length, which then
    /// sits at `record[NONCE_LEN..][..len]`.
    fn open(&self, index: u64, last: bool, record: &mut [u8]) -> Result<usize, SealedError> {
        let failed = SealedError::Authentication { chunk: index };
        if record.len() < CHUNK_OVERHEAD as usize {
            return Err(failed);
        }
        let (nonce, sealed) = record.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed)?;
        self.key
            .open_in_place(nonce, self.aad(index, last), sealed)
            .map(|plain| plain.len())
            .map_err(|_| SealedError::Authentication { chunk: index })
    }
}

/// Reads and checks the header of `file`, unwrapping its data key with `master`.
fn read_header(
    file: &File,
    file_len: u64,
    master: &MasterKey,
    path: &Path,
) -> Result<ChunkCipher, SealedError> {
    let mut fixed = [0; FIXED_HEADER_LEN];
    if file_len < FIXED_HEADER_LEN as u64 {
        if file_len >= MAGIC.len() as u64 {
            file.read_exact_at(&mut fixed[..MAGIC.len()], 0).at(path)?;
            if &fixed[..MAGIC.len()] != MAGIC {
                return Err(SealedError::NotSealed);
            }
        }
        return Err(SealedError::BadHeader("file ends inside the header"));
    }
    file.read_exact_at(&mut fixed, 0).at(path)?;
    if &fixed[..8] != MAGIC {
        return Err(SealedError::NotSealed);
    }
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if version != VERSION {
        return Err(SealedError::UnsupportedVersion(version));
    }
    let chunk_size = u32::from_le_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]);
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(SealedError::BadHeader("chunk size out of range"));
    }
    let context_len = usize::from(u16::from_le_bytes([fixed[14], fixed[15]]));
    if context_len > MAX_CONTEXT_LEN {
        return Err(SealedError::BadHeader("context too long"));
    }
    let header_len = FIXED_HEADER_LEN + context_len + WRAPPED_KEY_LEN;
    if file_len < header_len as u64 {
        return Err(SealedError::BadHeader("file ends inside the header"));
    }
    let mut header = vec![0; header_len];
    file.read_exact_at(&mut header, 0).at(path)?;
    let (prefix, wrapped) = header.split_at(FIXED_HEADER_LEN + context_len);
    let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN])
        .map_err(|_| SealedError::HeaderAuthentication)?;
    let mut data_key = [0; KEY_LEN + TAG_LEN];
    data_key.copy_from_slice(&wrapped[NONCE_LEN..]);
    let key = master
        .aead_key()
        .open_in_place(nonce, Aad::from(prefix), &mut data_key)
        .map_err(|_| SealedError::HeaderAuthentication)?;
    let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealedError::HeaderAuthentication)?;
    Ok(ChunkCipher {
        key: LessSafeKey::new(key),
        header_digest: sha256(&header),
        header_len: header_len as u64,
        chunk_size: chunk_size as usize,
        context: prefix[FIXED_HEADER_LEN..].to_vec(),
    })
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&SHA256, data).as_ref());
    out
}

/// What a finished sealed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSummary {
    /// Plaintext length in bytes.
    pub len: u64,
    /// SHA-256 of the final plaintext (after all patches), e.g. for the recordings index.
    pub sha256: [u8; 32],
}

/// What the file holds for the chunk in the writer's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    /// Nothing, or an older version of the buffer.
    Stale,
    /// The buffer, sealed as not final.
    NotFinal,
    /// The buffer, sealed as final.
    Final,
}

/// Writes a sealed file: appends plaintext, flushes, patches, finishes.
///
/// The writer does no I/O in [`SealedWriter::write`] until a chunk fills up. After any
/// error it refuses further calls ([`SealedError::Poisoned`]); [`recover`] the file.
pub struct SealedWriter {
    file: File,
    path: PathBuf,
    cipher: ChunkCipher,
    rng: SystemRandom,
    /// Index of the chunk in `buf`: every chunk before it is full and on disk.
    index: u64,
    /// Plaintext of chunk `index`, 0 to `chunk_size` bytes (0 only while the file is empty).
    buf: Vec<u8>,
    on_disk: OnDisk,
    /// Scratch space for one sealed chunk.
    record: Vec<u8>,
    /// SHA-256 of the plaintext so far; `None` once a patch invalidated it.
    digest: Option<digest::Context>,
    poisoned: bool,
}

impl std::fmt::Debug for SealedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWriter")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl SealedWriter {
    /// Creates a sealed file at `path` (which must not exist, mode `0600`) with the default
    /// chunk size. `context` identifies the file, e.g. `b"<recording id>/<track>"`; it is
    /// stored in the clear and authenticated. The header is synced before this returns.
    pub fn create(
        path: &Path,
        master: &MasterKey,
        context: &[u8],
    ) -> Result<SealedWriter, SealedError> {
        SealedWriter::create_with_chunk_size(path, master, context, DEFAULT_CHUNK_SIZE)
    }

    /// [`SealedWriter::create`] with `chunk_size` plaintext bytes per chunk.
    pub fn create_with_chunk_size(
        path: &Path,
        master: &MasterKey,
        context: &[u8],
        chunk_size: u32,
    ) -> Result<SealedWriter, SealedError> {
        if context.len() > MAX_CONTEXT_LEN {
            return Err(SealedError::InvalidParameter("context too long"));
        }
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(SealedError::InvalidParameter("chunk size out of range"));
        }
        let rng = SystemRandom::new();
        let mut data_key = [0; KEY_LEN];
        rng.fill(&mut data_key).map_err(|_| SealedError::Random)?;
        let key_nonce = random_nonce(&rng)?;

        let mut header = Vec::with_capacity(FIXED_HEADER_LEN + context.len() + WRAPPED_KEY_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&chunk_size.to_le_bytes());
        header.extend_from_slice(&(context.len() as u16).to_le_bytes());
        header.extend_from_slice(context);
        let prefix_len = header.len();
        header.extend_from_slice(&key_nonce);
        header.extend_from_slice(&data_key);
        let (prefix, key_part) = header.split_at_mut(prefix_len);
        let tag = master
            .aead_key()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(key_nonce),
                Aad::from(&*prefix),
                &mut key_part[NONCE_LEN..],
            )
            .map_err(|_| SealedError::InvalidParameter("cannot wrap the data key"))?;
        header.extend_from_slice(tag.as_ref());

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .at(path)?;
        let written = file
            .write_all_at(&header, 0)
            .and_then(|()| file.sync_data())
            .at(path)
            .and_then(|()| sync_parent_dir(path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let cipher = ChunkCipher {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &data_key).expect("32-byte AES key"),
            ),
            header_digest: sha256(&header),
            header_len: header.len() as u64,
            chunk_size: chunk_size as usize,
            context: context.to_vec(),
        };
        let scan = Scan {
            last: None,
            last_plain: Vec::new(),
            good_end: cipher.header_len,
            digest: digest::Context::new(&SHA256),
        };
        Ok(SealedWriter::new(file, path, cipher, scan))
    }

    /// Reopens an existing sealed file to continue it: recovers it as [`recover`] does (cuts
    /// off a torn tail; fails, changing nothing, on damage that an authentic chunk follows)
    /// and positions the writer at the end of the plaintext. A finished file becomes
    /// unfinished again as soon as its last chunk is rewritten.
    pub fn resume(path: &Path, master: &MasterKey) -> Result<SealedWriter, SealedError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .at(path)?;
        let file_len = file.metadata().at(path)?.len();
        let cipher = read_header(&file, file_len, master, path)?;
        let scan = scan_chunks(&file, file_len, &cipher, path)?;
        if scan.good_end < file_len {
            file.set_len(scan.good_end)
                .and_then(|()| file.sync_data())
                .at(path)?;
        }
        Ok(SealedWriter::new(file, path, cipher, scan))
    }

    /// A writer continuing after the chunks `scan` found.
    fn new(file: File, path: &Path, cipher: ChunkCipher, scan: Scan) -> SealedWriter {
        let (index, on_disk) = match scan.last {
            None => (0, OnDisk::Stale),
            Some((index, true)) => (index, OnDisk::Final),
            Some((index, false)) => (index, OnDisk::NotFinal),
        };
        let mut buf = scan.last_plain;
        buf.reserve(cipher.chunk_size.saturating_sub(buf.len()));
        let record = Vec::with_capacity(cipher.chunk_size + CHUNK_OVERHEAD as usize);
        SealedWriter {
            file,
            path: path.to_path_buf(),
            cipher,
            rng: SystemRandom::new(),
            index,
            buf,
            on_disk,
            record,
            digest: Some(scan.digest),
            poisoned: false,
        }
    }

    /// Plaintext bytes written so far.
    pub fn len(&self) -> u64 {
        self.index * self.cipher.chunk_size as u64 + self.buf.len() as u64
    }

    /// Whether no plaintext has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data` to the plaintext. Full chunks are sealed and written (not synced).
    pub fn write(&mut self, data: &[u8]) -> Result<(), SealedError> {
        self.guard(|w| {
            let mut rest = data;
            while !rest.is_empty() {
                if w.buf.len() == w.cipher.chunk_size {
                    if w.on_disk != OnDisk::NotFinal {
                        w.write_current(false)?;
                    }
                    w.index += 1;
                    w.buf.clear();
                }
                let take = rest.len().min(w.cipher.chunk_size - w.buf.len());
                w.buf.extend_from_slice(&rest[..take]);
                w.on_disk = OnDisk::Stale;
                rest = &rest[take..];
            }
            if let Some(digest) = &mut w.digest {
                digest.update(data);
            }
            Ok(())
        })
    }

    /// Writes the incomplete last chunk too (sealed as not final) and `fdatasync`s: after
    /// a crash, everything written before this call can be recovered.
    pub fn flush(&mut self) -> Result<(), SealedError> {
        self.guard(|w| {
            if w.on_disk == OnDisk::Stale && !w.buf.is_empty() {
                w.write_current(false)?;
            }
            w.file.sync_data().at(&w.path)
        })
    }

    /// Overwrites plaintext already written, from `offset` on, with `data` (for example a
    /// WebM Duration field). Affected chunks on disk are re-sealed, each with a fresh nonce.
    /// The range must lie within [`SealedWriter::len`].
    pub fn patch(&mut self, offset: u64, data: &[u8]) -> Result<(), SealedError> {
        let len = self.len();
        let end = offset.saturating_add(data.len() as u64);
        if end > len {
            return Err(SealedError::OutOfRange {
                start: offset,
                end,
                len,
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        self.guard(|w| {
            let chunk_size = w.cipher.chunk_size as u64;
            let mut pos = offset;
            while pos < end {
                let index = pos / chunk_size;
                let within = (pos % chunk_size) as usize;
                let take = ((end - pos) as usize).min(w.cipher.chunk_size - within);
                let part = &data[(pos - offset) as usize..][..take];
                if index == w.index {
                    w.buf[within..within + take].copy_from_slice(part);
                    w.on_disk = OnDisk::Stale;
                } else {
                    w.patch_chunk(index, within, part)?;
                }
                pos += take as u64;
            }
            w.digest = None;
            Ok(())
        })
    }

    /// Seals the last chunk as final, syncs, and returns the plaintext length and SHA-256.
    ///
    /// The digest is computed while writing; after a patch it is computed by reading the
    /// file back (which also checks every chunk).
    pub fn finish(mut self) -> Result<SealedSummary, SealedError> {
        if self.poisoned {
            return Err(SealedError::Poisoned);
        }
        if self.on_disk != OnDisk::Final {
            self.write_current(true)?;
        }
        self.file.sync_data().at(&self.path)?;
        let len = self.len();
        let sha256 = match self.digest.take() {
            Some(digest) => {
                let mut out = [0; 32];
                out.copy_from_slice(digest.finish().as_ref());
                out
            }
            None => {
                let mut reader = SealedReader::from_parts(self.file, self.path, self.cipher)?;
                reader.sha256()?
            }
        };
        Ok(SealedSummary { len, sha256 })
    }

    /// Runs `op`, poisoning the writer if it fails.
    fn guard<T>(
        &mut self,
        op: impl FnOnce(&mut SealedWriter) -> Result<T, SealedError>,
    ) -> Result<T, SealedError> {
        if self.poisoned {
            return Err(SealedError::Poisoned);
        }
        let result = op(self);
        self.poisoned = result.is_err();
        result
    }

    /// Seals the buffered chunk and writes it at its offset.
    fn write_current(&mut self, last: bool) -> Result<(), SealedError> {
        self.cipher
            .seal(&self.rng, self.index, last, &self.buf, &mut self.record)?;
        let offset = self.cipher.offset(self.index);
        self.file
            .write_all_at(&self.record, offset)
            .at(&self.path)?;
        self.on_disk = if last {
            OnDisk::Final
        } else {
            OnDisk::NotFinal
        };
        Ok(())
    }

    /// Rewrites `part` at `within` in the full chunk `index` on disk, with a fresh nonce.
    fn patch_chunk(&mut self, index: u64, within: usize, part: &[u8]) -> Result<(), SealedError> {
        let offset = self.cipher.offset(index);
        self.record.resize(self.cipher.record_len() as usize, 0);
        self.file
            .read_exact_at(&mut self.record, offset)
            .at(&self.path)?;
        let plain_len = self.cipher.open(index, false, &mut self.record)?;
        let mut plain = self.record[NONCE_LEN..][..plain_len].to_vec();
        plain[within..within + part.len()].copy_from_slice(part);
        self.cipher
            .seal(&self.rng, index, false, &plain, &mut self.record)?;
        self.file.write_all_at(&self.record, offset).at(&self.path)
    }
}

/// Result of checking a file's chunks from the start, tolerating a torn tail.
struct Scan {
    /// Index of the last authentic chunk and whether it is final.
    last: Option<(u64, bool)>,
    /// Plaintext of that chunk.
    last_plain: Vec<u8>,
    /// File offset just after it (the header's end if there is none).
    good_end: u64,
    /// SHA-256 of the plaintext of all authentic chunks.
    digest: digest::Context,
}

/// Finds the longest prefix of authentic chunks. Damage after it is a torn tail unless an
/// authentic chunk follows at its own offset, which is [`SealedError::Authentication`].
fn scan_chunks(
    file: &File,
    file_len: u64,
    cipher: &ChunkCipher,
    path: &Path,
) -> Result<Scan, SealedError> {
    let mut record = Vec::with_capacity(cipher.record_len() as usize);
    let mut work = Vec::with_capacity(record.capacity());
    let mut scan = Scan {
        last: None,
        last_plain: Vec::new(),
        good_end: cipher.header_len,
        digest: digest::Context::new(&SHA256),
    };
    let mut index = 0;
    // Tries chunk `index` as not final, then as final.
    let mut try_chunk = |index: u64, record: &mut Vec<u8>| -> Result<Option<bool>, SealedError> {
        let offset = cipher.offset(index);
        let size = (file_len - offset).min(cipher.record_len()) as usize;
        record.resize(size, 0);
        file.read_exact_at(record, offset).at(path)?;
        for last in [false, true] {
            work.clear();
            work.extend_from_slice(record);
            if let Ok(len) = cipher.open(index, last, &mut work) {
                record.clear();
                record.extend_from_slice(&work[NONCE_LEN..][..len]);
                return Ok(Some(last));
            }
        }
        Ok(None)
    };
    while cipher.offset(index) < file_len && !matches!(scan.last, Some((_, true))) {
        match try_chunk(index, &mut record)? {
            Some(last) => {
                scan.last = Some((index, last));
                scan.digest.update(&record);
                std::mem::swap(&mut scan.last_plain, &mut record);
                scan.good_end = file_len.min(cipher.offset(index + 1));
                index += 1;
            }
            None => break,
        }
    }
    let first_bad = index;
    while cipher.offset(index) < file_len {
        if try_chunk(index, &mut record)?.is_some() {
            return Err(SealedError::Authentication { chunk: first_bad });
        }
        index += 1;
    }
    Ok(scan)
}

/// Makes a sealed file whose writer was killed whole again and returns its plaintext length.
///
/// Keeps every chunk that authenticates, truncates the file after the last good one, seals
/// that one as final and syncs, so [`SealedReader::open`] accepts the file afterwards. An
/// intact finished file is left as it is. Damage that an authentic chunk follows is not a
/// torn write: it fails with [`SealedError::Authentication`] and the file is not changed.
/// Reads and checks the whole file once. [`SealedWriter::resume`] then
/// [`SealedWriter::finish`] does the same and also returns the plaintext's SHA-256.
pub fn recover(path: &Path, master: &MasterKey) -> Result<u64, SealedError> {
    Ok(SealedWriter::resume(path, master)?.finish()?.len)
}

/// Reads a finished sealed file at any offset, checking each chunk it decrypts.
///
/// Also implements [`Read`] and [`Seek`] (errors come as [`io::ErrorKind::InvalidData`]
/// wrapping a [`SealedError`]); [`SealedReader::into_range`] streams a byte range chunk by
/// chunk, e.g. for an HTTP range request.
pub struct SealedReader {
    file: File,
    path: PathBuf,
    cipher: ChunkCipher,
    len: u64,
    /// Index of the file's last chunk.
    last_index: u64,
    /// Bytes the last chunk takes on disk.
    last_record: u64,
    /// The chunk whose plaintext `record[NONCE_LEN..][..cached_len]` holds, if any.
    cached: Option<u64>,
    cached_len: usize,
    record: Vec<u8>,
    /// Position for [`Read`] and [`Seek`].
    pos: u64,
}

impl std::fmt::Debug for SealedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedReader")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SealedReader {
    /// Opens a finished sealed file: checks the header and the last chunk, which must be
    /// marked final ([`SealedError::Unfinished`] otherwise).
    pub fn open(path: &Path, master: &MasterKey) -> Result<SealedReader, SealedError> {
        let file = File::open(path).at(path)?;
        let file_len = file.metadata().at(path)?.len();
        let cipher = read_header(&file, file_len, master, path)?;
        SealedReader::from_parts(file, path.to_path_buf(), cipher)
    }

    fn from_parts(
        file: File,
        path: PathBuf,
        cipher: ChunkCipher,
    ) -> Result<SealedReader, SealedError> {
        let file_len = file.metadata().at(&path)?.len();
        let body = file_len.saturating_sub(cipher.header_len);
        if body == 0 {
            return Err(SealedError::Unfinished);
        }
        let last_index = (body - 1) / cipher.record_len();
        let last_record = body - last_index * cipher.record_len();
        let mut reader = SealedReader {
            record: Vec::with_capacity(cipher.record_len() as usize),
            file,
            path,
            cipher,
            len: 0,
            last_index,
            last_record,
            cached: None,
            cached_len: 0,
            pos: 0,
        };
        if last_record < CHUNK_OVERHEAD {
            return Err(SealedError::Authentication { chunk: last_index });
        }
        if let Err(e) = reader.load(last_index) {
            // An authentic last chunk that is not final: the writer did not finish.
            let offset = reader.cipher.offset(last_index);
            reader.record.resize(last_record as usize, 0);
            reader
                .file
                .read_exact_at(&mut reader.record, offset)
                .at(&reader.path)?;
            return match reader.cipher.open(last_index, false, &mut reader.record) {
                Ok(_) => Err(SealedError::Unfinished),
                Err(_) => Err(e),
            };
        }
        reader.len = last_index * reader.cipher.chunk_size as u64 + reader.cached_len as u64;
        Ok(reader)
    }

    /// Plaintext length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The context (file id) the file was created with; compare it with the expected one.
    pub fn context(&self) -> &[u8] {
        &self.cipher.context
    }

    /// Reads plaintext from `offset` into `buf`; returns how many bytes were read: less than
    /// `buf.len()` only at the end of the plaintext, 0 at or past it.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SealedError> {
        let wanted = (buf.len() as u64).min(self.len.saturating_sub(offset)) as usize;
        let chunk_size = self.cipher.chunk_size as u64;
        let mut done = 0;
        while done < wanted {
            let pos = offset + done as u64;
            self.load(pos / chunk_size)?;
            let within = (pos % chunk_size) as usize;
            let take = (wanted - done).min(self.cached_len - within);
            buf[done..done + take].copy_from_slice(&self.record[NONCE_LEN + within..][..take]);
            done += take;
        }
        Ok(done)
    }

    /// Streams the plaintext bytes `range` as pieces of at most one chunk, each checked.
    /// Fails with [`SealedError::OutOfRange`] unless `range` lies within the plaintext.
    pub fn into_range(self, range: Range<u64>) -> Result<SealedRange, SealedError> {
        if range.start > range.end || range.end > self.len {
            return Err(SealedError::OutOfRange {
                start: range.start,
                end: range.end,
                len: self.len,
            });
        }
        Ok(SealedRange {
            reader: self,
            range,
        })
    }

    /// SHA-256 of the whole plaintext.
    fn sha256(&mut self) -> Result<[u8; 32], SealedError> {
        let mut digest = digest::Context::new(&SHA256);
        for index in 0..=self.last_index {
            self.load(index)?;
            digest.update(&self.record[NONCE_LEN..][..self.cached_len]);
        }
        let mut out = [0; 32];
        out.copy_from_slice(digest.finish().as_ref());
        Ok(out)
    }

    /// Decrypts chunk `index` into the cache unless it is there already.
    fn load(&mut self, index: u64) -> Result<(), SealedError> {
        if self.cached == Some(index) {
            return Ok(());
        }
        self.cached = None;
        let offset = self.cipher.offset(index);
        let last = index == self.last_index;
        let size = if last {
            self.last_record
        } else {
            self.cipher.record_len()
        };
        self.record.resize(size as usize, 0);
        self.file
            .read_exact_at(&mut self.record, offset)
            .at(&self.path)?;
        let len = self.cipher.open(index, last, &mut self.record)?;
        self.cached = Some(index);
        self.cached_len = len;
        Ok(())
    }
}

impl Read for SealedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .read_at(self.pos, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SealedReader {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target = match from {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// A byte range of a sealed file, yielded as checked plaintext pieces of at most one chunk.
/// After an error it yields nothing more.
#[derive(Debug)]
pub struct SealedRange {
    reader: SealedReader,
    range: Range<u64>,
}

impl Iterator for SealedRange {
    type Item = Result<Vec<u8>, SealedError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.range.is_empty() {
            return None;
        }
        let chunk_size = self.reader.cipher.chunk_size as u64;
        let start = self.range.start;
        let size = (chunk_size - start % chunk_size).min(self.range.end - start);
        let mut piece = vec![0; size as usize];
        match self.reader.read_at(start, &mut piece) {
            Ok(_) => {
                self.range.start += size;
                Some(Ok(piece))
            }
            Err(e) => {
                self.range.start = self.range.end;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for SealedRange {}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 16;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; KEY_LEN])
    }

    /// Deterministic test plaintext: `len` bytes that differ from chunk to chunk.
    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 13) as u8).collect()
    }

    /// Writes `data` in pieces of `piece` bytes with a flush every few pieces, then finishes.
    fn write_file(path: &Path, data: &[u8], piece: usize) -> SealedSummary {
        let mut writer =
            SealedWriter::create_with_chunk_size(path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        for (i, part) in data.chunks(piece.max(1)).enumerate() {
            writer.write(part).unwrap();
            if i % 3 == 2 {
                writer.flush().unwrap();
            }
        }
        writer.finish().unwrap()
    }

    fn read_all(path: &Path, master: &MasterKey) -> Result<Vec<u8>, SealedError> {
        let mut reader = SealedReader::open(path, master)?;
        let mut out = vec![0; reader.len() as usize];
        assert_eq!(reader.read_at(0, &mut out)?, out.len());
        Ok(out)
    }

    fn flip(path: &Path, offset: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x01], offset).unwrap();
    }

    fn chunk_offset(index: u64) -> u64 {
        (FIXED_HEADER_LEN + b"rec-1/audio".len() + WRAPPED_KEY_LEN) as u64
            + index * (u64::from(CHUNK) + CHUNK_OVERHEAD)
    }

    #[test]
    fn round_trips_every_size_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for len in 0..=4 * CHUNK as usize + 1 {
            for piece in [1, 5, 16, 17, 100] {
                let path = dir.path().join(format!("{len}-{piece}"));
                let data = plaintext(len);
                let summary = write_file(&path, &data, piece);
                assert_eq!(summary.len, len as u64);
                assert_eq!(summary.sha256, sha256(&data));
                assert_eq!(read_all(&path, &key(1)).unwrap(), data, "len {len}");
            }
        }
    }

    #[test]
    fn round_trips_with_the_default_chunk_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let data = plaintext(3 * DEFAULT_CHUNK_SIZE as usize + 1234);
        let mut writer = SealedWriter::create(&path, &key(1), b"ctx").unwrap();
        writer.write(&data).unwrap();
        let summary = writer.finish().unwrap();
        assert_eq!(summary.sha256, sha256(&data));
        let mut reader = SealedReader::open(&path, &key(1)).unwrap();
        assert_eq!(reader.context(), b"ctx");
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn random_access_reads_equal_the_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = plaintext(3 * CHUNK as usize + 5);
        write_file(&path, &data, 7);
        let mut reader = SealedReader::open(&path, &key(1)).unwrap();
        for start in 0..=data.len() + 2 {
            for len in 0..=data.len() + 2 - start {
                let mut buf = vec![0; len];
                let n = reader.read_at(start as u64, &mut buf).unwrap();
                let expected = &data[start.min(data.len())..(start + len).min(data.len())];
                assert_eq!(&buf[..n], expected, "{start}+{len}");
            }
        }
        reader.seek(SeekFrom::End(-6)).unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, &data[data.len() - 6..]);
    }

    #[test]
    fn streams_a_byte_range_in_checked_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = plaintext(5 * CHUNK as usize);
        write_file(&path, &data, 9);
        let reader = SealedReader::open(&path, &key(1)).unwrap();
        let pieces: Vec<Vec<u8>> = reader
            .into_range(10..70)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(pieces.iter().all(|p| p.len() <= CHUNK as usize));
        assert_eq!(pieces.concat(), &data[10..70]);
        let reader = SealedReader::open(&path, &key(1)).unwrap();
        assert!(matches!(
            reader.into_range(70..81),
            Err(SealedError::OutOfRange { len: 80, .. })
        ));
    }

    #[test]
    fn patch_rewrites_written_and_buffered_chunks_with_fresh_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut data = plaintext(3 * CHUNK as usize + 4);
        let mut writer =
            SealedWriter::create_with_chunk_size(&path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        writer.write(&data).unwrap();
        writer.flush().unwrap();
        let mut nonce_before = [0; NONCE_LEN];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut nonce_before, chunk_offset(0))
            .unwrap();
        // Spans chunks 0 and 1 on disk; then chunk 2 and the buffered chunk 3.
        for (offset, patch) in [(10, &b"ABCDEFGHIJ"[..]), (45, b"xyz"), (51, b"!")] {
            writer.patch(offset, patch).unwrap();
            data[offset as usize..][..patch.len()].copy_from_slice(patch);
        }
        assert!(matches!(
            writer.patch(50, b"too far"),
            Err(SealedError::OutOfRange { .. })
        ));
        let summary = writer.finish().unwrap();
        assert_eq!(summary.sha256, sha256(&data));
        assert_eq!(read_all(&path, &key(1)).unwrap(), data);
        let mut nonce_after = [0; NONCE_LEN];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut nonce_after, chunk_offset(0))
            .unwrap();
        assert_ne!(nonce_before, nonce_after);
    }

    #[test]
    fn a_flipped_byte_anywhere_fails_authentication() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("original");
        let data = plaintext(2 * CHUNK as usize + 3);
        write_file(&original, &data, 4);
        let file_len = std::fs::metadata(&original).unwrap().len();
        for offset in 0..file_len {
            let path = dir.path().join(format!("flip-{offset}"));
            std::fs::copy(&original, &path).unwrap();
            flip(&path, offset);
            let result = read_all(&path, &key(1));
            if offset >= chunk_offset(0) {
                let chunk = (offset - chunk_offset(0)) / (u64::from(CHUNK) + CHUNK_OVERHEAD);
                assert!(
                    matches!(result, Err(SealedError::Authentication { chunk: c }) if c == chunk),
                    "offset {offset}: {result:?}"
                );
            } else {
                assert!(result.is_err(), "header offset {offset}");
            }
        }
    }

    #[test]
    fn swapped_chunks_and_a_chunk_from_another_file_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let other = dir.path().join("other");
        let data = plaintext(4 * CHUNK as usize);
        write_file(&path, &data, 16);
        write_file(&other, &data, 16);
        let record = (u64::from(CHUNK) + CHUNK_OVERHEAD) as usize;
        let mut bytes = std::fs::read(&path).unwrap();
        let (a, b) = (chunk_offset(1) as usize, chunk_offset(2) as usize);
        let chunk1 = bytes[a..a + record].to_vec();
        bytes.copy_within(b..b + record, a);
        bytes[b..b + record].copy_from_slice(&chunk1);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_all(&path, &key(1)),
            Err(SealedError::Authentication { chunk: 1 })
        ));

        let mut bytes = std::fs::read(&other).unwrap();
        let foreign = std::fs::read(dir.path().join("f")).unwrap();
        let c = chunk_offset(0) as usize;
        bytes[c..c + record].copy_from_slice(&foreign[c..c + record]);
        std::fs::write(&other, &bytes).unwrap();
        assert!(matches!(
            read_all(&other, &key(1)),
            Err(SealedError::Authentication { chunk: 0 })
        ));
    }

    #[test]
    fn wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_file(&path, b"secret", 3);
        assert!(matches!(
            SealedReader::open(&path, &key(2)),
            Err(SealedError::HeaderAuthentication)
        ));
    }

    #[test]
    fn hostile_files_give_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for bytes in [
            &b""[..],
            b"MRSEAL",
            b"MRSEALED",
            b"NOTSEALED-------",
            b"MRSEALED\x02\x00",
        ] {
            std::fs::write(&path, bytes).unwrap();
            assert!(SealedReader::open(&path, &key(1)).is_err());
            assert!(recover(&path, &key(1)).is_err());
        }
        let mut header = Vec::from(&MAGIC[..]);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        header.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &header).unwrap();
        assert!(matches!(
            SealedReader::open(&path, &key(1)),
            Err(SealedError::BadHeader(_))
        ));
    }

    #[test]
    fn truncated_file_is_recovered_to_whole_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = plaintext(3 * CHUNK as usize + 5);
        let mut writer =
            SealedWriter::create_with_chunk_size(&path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        writer.write(&data).unwrap();
        writer.flush().unwrap();
        drop(writer); // killed: never finished
        assert!(matches!(
            SealedReader::open(&path, &key(1)),
            Err(SealedError::Unfinished)
        ));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(chunk_offset(3) + 7).unwrap(); // torn inside chunk 3
        assert_eq!(recover(&path, &key(1)).unwrap(), 3 * u64::from(CHUNK));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), chunk_offset(3));
        assert_eq!(
            read_all(&path, &key(1)).unwrap(),
            &data[..3 * CHUNK as usize]
        );
        // Recovering an intact finished file changes nothing.
        let before = std::fs::read(&path).unwrap();
        assert_eq!(recover(&path, &key(1)).unwrap(), 3 * u64::from(CHUNK));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn recovery_keeps_a_flushed_partial_chunk_and_drops_unflushed_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = plaintext(2 * CHUNK as usize + 5);
        let mut writer =
            SealedWriter::create_with_chunk_size(&path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        writer.write(&data).unwrap();
        writer.flush().unwrap();
        writer.write(b"lost").unwrap(); // buffered only
        drop(writer);
        assert_eq!(recover(&path, &key(1)).unwrap(), data.len() as u64);
        assert_eq!(read_all(&path, &key(1)).unwrap(), data);

        let empty = dir.path().join("empty");
        drop(SealedWriter::create(&empty, &key(1), b"").unwrap());
        assert_eq!(recover(&empty, &key(1)).unwrap(), 0);
        assert!(read_all(&empty, &key(1)).unwrap().is_empty());
    }

    #[test]
    fn resume_continues_a_crashed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = plaintext(2 * CHUNK as usize + 5);
        let mut writer =
            SealedWriter::create_with_chunk_size(&path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        writer.write(&data[..20]).unwrap();
        writer.flush().unwrap();
        drop(writer);
        let mut writer = SealedWriter::resume(&path, &key(1)).unwrap();
        assert_eq!(writer.len(), 20);
        writer.write(&data[20..]).unwrap();
        writer.patch(0, b"P").unwrap();
        let mut expected = data.clone();
        expected[0] = b'P';
        let summary = writer.finish().unwrap();
        assert_eq!(summary.sha256, sha256(&expected));
        assert_eq!(read_all(&path, &key(1)).unwrap(), expected);
    }

    #[test]
    fn resume_and_finish_return_the_digest_of_the_recovered_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = plaintext(3 * CHUNK as usize + 9);
        let mut writer =
            SealedWriter::create_with_chunk_size(&path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        writer.write(&data).unwrap();
        writer.flush().unwrap();
        drop(writer);
        let summary = SealedWriter::resume(&path, &key(1))
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(summary.len, data.len() as u64);
        assert_eq!(summary.sha256, sha256(&data));
    }

    #[test]
    fn a_writer_that_failed_refuses_further_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer =
            SealedWriter::create_with_chunk_size(&path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        writer.write(&plaintext(2 * CHUNK as usize)).unwrap();
        flip(&path, chunk_offset(0) + 3);
        assert!(matches!(
            writer.patch(0, b"x"),
            Err(SealedError::Authentication { chunk: 0 })
        ));
        assert!(matches!(writer.write(b"more"), Err(SealedError::Poisoned)));
        assert!(matches!(writer.finish(), Err(SealedError::Poisoned)));
    }

    #[test]
    fn tamper_in_the_middle_is_an_error_not_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = plaintext(4 * CHUNK as usize + 2);
        let mut writer =
            SealedWriter::create_with_chunk_size(&path, &key(1), b"rec-1/audio", CHUNK).unwrap();
        writer.write(&data).unwrap();
        writer.flush().unwrap();
        drop(writer);
        flip(&path, chunk_offset(1) + 20);
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            recover(&path, &key(1)),
            Err(SealedError::Authentication { chunk: 1 })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn cutting_whole_chunks_off_a_finished_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_file(&path, &plaintext(3 * CHUNK as usize), 16);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(chunk_offset(2)).unwrap();
        assert!(matches!(
            SealedReader::open(&path, &key(1)),
            Err(SealedError::Unfinished)
        ));
    }

    #[test]
    fn master_key_file_round_trips_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        assert!(matches!(
            MasterKey::load(&path),
            Err(SealedError::Io { .. })
        ));
        let created = MasterKey::create(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(MasterKey::load(&path).unwrap().secret(), created.secret());
        assert!(matches!(
            MasterKey::create(&path),
            Err(SealedError::KeyFileExists { .. })
        ));
        for bad in [&b"abcd\n"[..], &[b'g'; 64], &[b'a'; 300]] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(
                MasterKey::load(&path),
                Err(SealedError::BadKeyFile { .. })
            ));
        }
        assert!(!format!("{created:?}").contains(&encode_hex(created.secret())));
    }
}
