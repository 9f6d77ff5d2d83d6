//! Encryption at rest of a [`crate::journal::Journal`]'s records: each record's payload is
//! sealed with AES-256-GCM under the journal's own data key, which is kept in
//! `<journal dir>/key.sealed` sealed under the master key ([`crate::sealed`]).
//!
//! A sealed payload is `[1: version = 1][12: nonce][ciphertext][16: tag]`; the nonce is a
//! random 4-byte prefix chosen when the key is opened followed by a 64-bit counter, so nonces
//! never repeat under one key; the authenticated data is the journal's context (e.g. the
//! ambulance stream id) and the record kind, so a record cannot be moved to another journal
//! or kind. The record kinds, sequence framing and CRCs of the journal stay as they are.

use crate::sealed::{MasterKey, SealedError, SealedReader, SealedWriter};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The file holding a journal's data key.
pub const KEY_FILE: &str = "key.sealed";
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Bytes a sealed payload adds to a record.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Longest journal context (e.g. a stream id): the authenticated data is built on the stack.
pub const MAX_CONTEXT: usize = 64;

/// Why a record could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalSealError {
    /// The key file failed.
    #[error(transparent)]
    Key(#[from] SealedError),
    /// The key file holds no 32-byte key, or belongs to another journal.
    #[error("the journal's key file is not this journal's")]
    WrongKeyFile,
    /// The record was changed, cut, or sealed under another key, journal or kind.
    #[error("a journal record failed authentication")]
    Authentication,
    /// The randomness source failed.
    #[error("no randomness for a new key")]
    Random,
    /// The context is longer than [`MAX_CONTEXT`].
    #[error("a journal context is at most {MAX_CONTEXT} bytes")]
    ContextTooLong,
}

/// A journal's data key (see the [module documentation](self)).
pub struct JournalKey {
    key: LessSafeKey,
    context: Vec<u8>,
    prefix: [u8; 4],
    counter: AtomicU64,
}

impl std::fmt::Debug for JournalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalKey").finish_non_exhaustive()
    }
}

impl JournalKey {
    /// Opens the key of the journal in `dir`, creating it (and `dir`) when there is none.
    pub fn open_or_create(
        dir: &Path,
        master: &MasterKey,
        context: &[u8],
    ) -> Result<JournalKey, JournalSealError> {
        if context.len() > MAX_CONTEXT {
            return Err(JournalSealError::ContextTooLong);
        }
        let path = dir.join(KEY_FILE);
        let rng = SystemRandom::new();
        let mut raw = [0u8; 32];
        if path.exists() {
            let mut reader = SealedReader::open(&path, master)?;
            if reader.context() != context || reader.len() != 32 {
                return Err(JournalSealError::WrongKeyFile);
            }
            reader
                .read_exact(&mut raw)
                .map_err(|_| JournalSealError::WrongKeyFile)?;
        } else {
            std::fs::create_dir_all(dir).map_err(|source| {
                JournalSealError::Key(SealedError::Io {
                    path: dir.to_owned(),
                    source,
                })
            })?;
            rng.fill(&mut raw).map_err(|_| JournalSealError::Random)?;
            let mut writer = SealedWriter::create(&path, master, context)?;
            writer.write(&raw)?;
            writer.finish()?;
        }
        let mut prefix = [0u8; 4];
        rng.fill(&mut prefix)
            .map_err(|_| JournalSealError::Random)?;
        let key = UnboundKey::new(&AES_256_GCM, &raw).expect("a 32-byte key");
        Ok(JournalKey {
            key: LessSafeKey::new(key),
            context: context.to_vec(),
            prefix,
            counter: AtomicU64::new(0),
        })
    }

    /// The authenticated data of a record of `kind`: the context, then the kind (no
    /// allocation: this runs for every record).
    fn aad(&self, kind: u8) -> ([u8; MAX_CONTEXT + 1], usize) {
        let mut aad = [0u8; MAX_CONTEXT + 1];
        let n = self.context.len();
        aad[..n].copy_from_slice(&self.context);
        aad[n] = kind;
        (aad, n + 1)
    }

    /// The sealed form of a record of `kind`.
    pub fn seal(&self, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.prefix);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        let mut out = Vec::with_capacity(payload.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(payload);
        let (aad, aad_len) = self.aad(kind);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..aad_len]),
                &mut out[1 + NONCE_LEN..],
            )
            .expect("a record fits AES-GCM's limits");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The payload of a sealed record of `kind`.
    pub fn open(&self, kind: u8, sealed: &[u8]) -> Result<Vec<u8>, JournalSealError> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(JournalSealError::Authentication);
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("length");
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let (aad, aad_len) = self.aad(kind);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..aad_len]),
                &mut body,
            )
            .map_err(|_| JournalSealError::Authentication)?;
        let len = plain.len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let key = JournalKey::open_or_create(dir.path(), &master, b"AMB-7").unwrap();
        let a = key.seal(1, b"frame one");
        let b = key.seal(1, b"frame one");
        assert_ne!(a, b, "a fresh nonce per record");
        assert_eq!(key.open(1, &a).unwrap(), b"frame one");
        assert!(key.open(2, &a).is_err(), "another kind");
        let mut flipped = a.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(key.open(1, &flipped).is_err());
        assert!(key.open(1, &a[..5]).is_err());

        // Reopened: the same key; under another context or master key: refused.
        let again = JournalKey::open_or_create(dir.path(), &master, b"AMB-7").unwrap();
        assert_eq!(again.open(1, &a).unwrap(), b"frame one");
        assert!(matches!(
            JournalKey::open_or_create(dir.path(), &master, b"AMB-8"),
            Err(JournalSealError::WrongKeyFile)
        ));
        assert!(
            JournalKey::open_or_create(dir.path(), &MasterKey::from_bytes([8; 32]), b"AMB-7")
                .is_err()
        );
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(
            JournalKey::open_or_create(other.path(), &master, &[b'x'; MAX_CONTEXT + 1]),
            Err(JournalSealError::ContextTooLong)
        ));
        let other = JournalKey::open_or_create(other.path(), &master, b"AMB-7").unwrap();
        assert!(other.open(1, &a).is_err(), "another journal's key");
    }
}
