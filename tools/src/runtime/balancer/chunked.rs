//! Decoding a `Transfer-Encoding: chunked` answer (RFC 9112 §7.1) as it arrives, in
//! whatever pieces the socket hands over, into the data it carries. Chunk extensions and
//! trailer fields are read past and dropped (as nginx does); sizes, line endings and
//! lengths are checked, so a malformed answer is an error rather than a desynchronised
//! connection that could be reused.

use bytes::{Bytes, BytesMut};

/// The longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;
/// The most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 32 * 1024;

#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy)]
enum State {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    End,
}

/// What [`Chunked::decode`] found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete next step: read more.
    NeedMore,
    /// The last chunk and the trailers have been consumed.
    End,
}

impl Chunked {
    /// Consume from `buf` up to the next piece of data (returned without copying), or
    /// as far as it goes. Bytes after the end are left in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, String> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = line[..].split(|&b| b == b';').next().unwrap_or(b"");
                    // Whitespace before extensions is tolerated (RFC 9112 §7.1.1 BWS).
                    let size = size.trim_ascii();
                    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit)
                    {
                        return Err(format!(
                            "bad chunk size line {:?}",
                            String::from_utf8_lossy(&line[..line.len().min(40)])
                        ));
                    }
                    let n = u64::from_str_radix(std::str::from_utf8(size).unwrap_or("x"), 16)
                        .map_err(|e| format!("bad chunk size: {e}"))?;
                    self.state = if n == 0 {
                        State::Trailers
                    } else {
                        State::Data(n)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::End;
                        return Ok(Decoded::End);
                    }
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(format!("trailers over {MAX_TRAILERS} bytes"));
                    }
                }
                State::End => return Ok(Decoded::End),
            }
        }
    }
}

/// The next CRLF-terminated line, without its CRLF.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, String> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => {
            let mut l = buf.split_to(i + 1);
            l.truncate(i - 1);
            Ok(Some(l))
        }
        Some(_) => Err("bare LF in a chunked body".into()),
        None if buf.len() > MAX_LINE => Err(format!("chunk line over {MAX_LINE} bytes")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; the data, whether it ended, what is left.
    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, bool, Vec<u8>), String> {
        let mut c = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match c.decode(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((out, true, buf.to_vec())),
                }
            }
        }
        Ok((out, false, buf.to_vec()))
    }

    #[test]
    fn decodes_in_any_pieces() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n, world!!!\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (data, ended, rest) = run(body, step).unwrap();
            assert_eq!(data, b"hello, world!!!", "step {step}");
            assert!(ended, "step {step}");
            if step == body.len() {
                // What follows the answer stays for whoever reads next.
                assert_eq!(rest, b"NEXT");
            }
        }
    }

    #[test]
    fn sizes_in_either_case_and_with_whitespace() {
        let (d, e, _) = run(b"a \r\n0123456789\r\nB\r\n0123456789a\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(d.len(), 21);
        assert!(e);
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        let (d, e, _) = run(b"5\r\nhel", 100).unwrap();
        assert_eq!(d, b"hel");
        assert!(!e);
        let (_, e, _) = run(b"0\r\n", 100).unwrap();
        assert!(!e, "the end needs the empty line after the trailers");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [
            &b"x\r\nhello\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"-5\r\n",
        ] {
            assert!(run(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(run(bad, bad.len()).is_err());
        }
        let long = vec![b'1'; MAX_LINE + 10];
        assert!(run(&long, 100).is_err());
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"x-trailer: 0123456789abcdef\r\n");
        }
        assert!(run(&trailers, 1000).is_err());
    }
}
