//! Layer decompression: gzip (one or more members, zero padding after the last one tolerated),
//! zstd, or plain tar. The compressed stream is always read to its very end, so a digest taken
//! below the decompressor covers the whole blob.

use std::io::{self, BufRead, Read};

use flate2::bufread::GzDecoder;

use crate::spec::Compression;

pub enum Decompressor<R: BufRead> {
    Plain(R),
    Gzip(Box<GzMembers<R>>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decompressor<R> {
    pub fn new(c: Compression, r: R) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Decompressor::Plain(r),
            Compression::Gzip => Decompressor::Gzip(Box::new(GzMembers {
                state: GzState::Member(Box::new(GzDecoder::new(r))),
            })),
            Compression::Zstd => Decompressor::Zstd(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }

    /// The underlying compressed stream (call after reading to EOF).
    pub fn into_inner(self) -> R {
        match self {
            Decompressor::Plain(r) => r,
            Decompressor::Gzip(g) => match g.state {
                GzState::Member(d) => d.into_inner(),
                GzState::Done(r) => r,
                GzState::Poisoned => unreachable!("gzip state poisoned by a panic"),
            },
            Decompressor::Zstd(z) => z.finish(),
        }
    }
}

impl<R: BufRead> Read for Decompressor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressor::Plain(r) => r.read(buf),
            Decompressor::Gzip(g) => g.read(buf),
            Decompressor::Zstd(z) => z.read(buf),
        }
    }
}

pub struct GzMembers<R: BufRead> {
    state: GzState<R>,
}

enum GzState<R: BufRead> {
    Member(Box<GzDecoder<R>>),
    Done(R),
    Poisoned,
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let dec = match &mut self.state {
                GzState::Member(d) => d,
                GzState::Done(_) => return Ok(0),
                GzState::Poisoned => return Err(io::Error::other("gzip stream failed earlier")),
            };
            let n = dec
                .read(buf)
                .map_err(|e| io::Error::new(e.kind(), format!("gzip: {e}")))?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // End of a member: another member, zero padding, or the end.
            let GzState::Member(dec) = std::mem::replace(&mut self.state, GzState::Poisoned) else {
                unreachable!()
            };
            let mut inner = dec.into_inner();
            let avail = inner.fill_buf()?;
            if avail.first() == Some(&0x1f) {
                self.state = GzState::Member(Box::new(GzDecoder::new(inner)));
                continue;
            }
            loop {
                let avail = inner.fill_buf()?;
                if avail.is_empty() {
                    break;
                }
                if avail.iter().any(|&b| b != 0) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "gzip: trailing garbage after the compressed stream",
                    ));
                }
                let l = avail.len();
                inner.consume(l);
            }
            self.state = GzState::Done(inner);
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn inflate(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut d = Decompressor::new(Compression::Gzip, io::Cursor::new(bytes))?;
        let mut out = Vec::new();
        d.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn members_and_padding() {
        let mut two = gz(b"hello ");
        two.extend(gz(b"world"));
        assert_eq!(inflate(two.clone()).unwrap(), b"hello world");
        two.extend([0u8; 1024]);
        assert_eq!(inflate(two.clone()).unwrap(), b"hello world");
        two.push(7);
        assert!(inflate(two).is_err());
        let mut trunc = gz(&[42u8; 100_000]);
        trunc.truncate(trunc.len() / 2);
        assert!(inflate(trunc).is_err());
    }

    #[test]
    fn zstd_roundtrip() {
        let z = zstd::encode_all(&b"zstd layer"[..], 3).unwrap();
        let mut d = Decompressor::new(Compression::Zstd, io::Cursor::new(z)).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"zstd layer");
    }
}
