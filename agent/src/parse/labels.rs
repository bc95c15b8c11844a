//! Label values from untrusted sources (comm names, device names, paths).
//!
//! A process can name itself anything: quotes, backslashes, newlines, invalid UTF-8. The
//! exposition escapes `\`, `"` and newlines itself; what it cannot carry is invalid UTF-8,
//! so each invalid byte becomes the four characters `\xNN`. Valid text passes unchanged.

use std::fmt::Write as _;

/// A kernel string (NUL-terminated or filling its buffer) as a label value.
pub fn from_kernel(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    from_bytes(&bytes[..end])
}

/// Arbitrary bytes as a label value: valid UTF-8 kept, invalid bytes as `\xNN`.
pub fn from_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(err) => {
                let (valid, rest) = bytes.split_at(err.valid_up_to());
                // from_utf8 just validated this prefix: it cannot fail.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = err.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    let _ = write!(out, "\\x{b:02x}");
                }
                bytes = &rest[bad..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_comm_is_unchanged() {
        assert_eq!(from_kernel(b"ip\0\0\0\0\0\0\0\0\0\0\0\0\0\0"), "ip");
        assert_eq!(from_kernel(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn hostile_text_is_kept_for_the_encoder_to_escape() {
        assert_eq!(from_kernel(b"a\"b\\c\nd\0"), "a\"b\\c\nd");
    }

    #[test]
    fn invalid_utf8_becomes_hex_escapes() {
        assert_eq!(from_kernel(b"x\xff\xfey\0"), "x\\xff\\xfey");
        // A multi-byte character cut by the 16-byte comm limit.
        assert_eq!(from_kernel(b"caf\xc3"), "caf\\xc3");
        assert_eq!(from_kernel("né".as_bytes()), "né");
    }
}
