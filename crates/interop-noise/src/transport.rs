//! The transport phase: one encrypted Noise message per frame.

use crate::{Error, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, Result, frame};

/// Encrypts and decrypts transport frames after a completed handshake.
pub struct Transport {
    state: snow::TransportState,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(state: snow::TransportState) -> Self {
        Self { state, scratch: vec![0u8; MAX_NOISE_MESSAGE] }
    }

    /// Encrypts `plaintext` into one frame (length prefix included).
    pub fn encrypt_frame(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plaintext.len() + 16 + frame::LEN_PREFIX);
        self.encrypt_frame_into(plaintext, &mut out)?;
        Ok(out)
    }

    /// Encrypts `plaintext` into one frame appended to `out`.
    pub fn encrypt_frame_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::MessageTooLarge { len: plaintext.len(), max: MAX_PLAINTEXT });
        }
        let n = self.state.write_message(plaintext, &mut self.scratch).map_err(Error::Noise)?;
        frame::encode(&self.scratch[..n], out)
    }

    /// Decrypts one frame body.
    pub fn decrypt(&mut self, frame_body: &[u8]) -> Result<Vec<u8>> {
        let n = self.state.read_message(frame_body, &mut self.scratch).map_err(|e| match e {
            snow::Error::Decrypt => Error::Decrypt,
            other => Error::Noise(other),
        })?;
        Ok(self.scratch[..n].to_vec())
    }
}
