//! A bounds-checked little-endian reader over the bytes of a GGUF file.
//! Every read checks the remaining length first, so a truncated or hostile
//! file yields an error naming what was being read, never a panic.

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes; `what` names the field for the error.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "{what}: needs {n} bytes at offset {}, the file has {} left (truncated?)",
                self.pos,
                self.remaining()
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn f32(&mut self, what: &str) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn f64(&mut self, what: &str) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }

    /// A count (u64) that must fit in memory: at least `min_item_bytes` per
    /// item must remain, so a hostile count cannot make us allocate.
    pub(crate) fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize, String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| format!("{what}: {n} does not fit in memory"))?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(format!(
                "{what}: {n} items cannot fit in the {} bytes left (truncated or corrupt?)",
                self.remaining()
            ));
        }
        Ok(n)
    }

    /// A GGUF string: u64 length then UTF-8 bytes.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.count(1, what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_are_errors_naming_the_field() {
        let mut c = Cursor::new(&[1, 0, 0]);
        assert!(c.u32("version").unwrap_err().starts_with("version"));
        let mut c = Cursor::new(&[5, 0, 0, 0, 0, 0, 0, 0, b'a']);
        assert!(c.string("key").unwrap_err().contains("key"));
        let mut c = Cursor::new(&[0xff; 8]);
        assert!(c.count(1, "n").is_err());
        let mut c = Cursor::new(&[2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(c.string("s").unwrap(), "hi");
        assert_eq!(c.remaining(), 0);
    }
}
