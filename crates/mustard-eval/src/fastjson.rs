//! A fast reader for the two COCO documents the evaluation reads (ground truth and results),
//! beside the serde one in [`crate::json`].
//!
//! It reads the common case: strict JSON, ASCII strings with simple escapes, integers where
//! ids are expected, numbers anywhere else. Anything else, valid or not (a `\u` escape, a
//! non-ASCII string, a duplicate field, a float id, a syntax error), makes it give up with
//! `None`, and the caller parses the document again with serde, which then gives the same
//! value or the error that names the record. So the values it returns are the ones serde
//! would give, and every error message is serde's.
//!
//! Numbers follow serde_json's rules: a literal without a fraction or exponent is read as an
//! integer and converted (`-0` is `0.0`), any other is rounded correctly
//! (`float_roundtrip`), and a literal out of the `f64` range gives up.

use std::io::Read;

use crate::coco::{Category, GtAnnotation, Image, ResultRecord, Segmentation};

/// The ground truth's three lists.
pub(crate) struct GtLists {
    pub images: Vec<Image>,
    pub categories: Vec<Category>,
    pub annotations: Vec<GtAnnotation>,
}

/// The powers of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// serde_json's recursion limit; deeper documents give up.
const MAX_DEPTH: usize = 120;

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
    depth: usize,
    /// Reused by [`Reader::with_f64s`].
    nums: Vec<f64>,
    /// The length of the last list [`Reader::keypoints`] read.
    keypoints_len: usize,
}

type R<T> = Option<T>;

/// A number literal: the integer it is, when written as one and in range.
enum Num {
    Int(i128),
    Float(f64),
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader {
            b,
            p: 0,
            depth: 0,
            nums: Vec::new(),
            keypoints_len: 0,
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.p) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.p += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&mut self) -> R<u8> {
        self.ws();
        self.b.get(self.p).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.p += 1;
            Some(())
        } else {
            None
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b.get(self.p..self.p + word.len())? == word {
            self.p += word.len();
            Some(())
        } else {
            None
        }
    }

    /// `null` (after whitespace) is consumed and true.
    fn null(&mut self) -> R<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Some(true)
        } else {
            Some(false)
        }
    }

    /// A string without escapes, as a byte slice (keys and names).
    fn plain_str(&mut self) -> R<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.p;
        loop {
            let c = *self.b.get(self.p)?;
            match c {
                b'"' => {
                    let s = &self.b[start..self.p];
                    self.p += 1;
                    return Some(s);
                }
                b'\\' | 0..=0x1f | 0x80..=0xff => return None,
                _ => self.p += 1,
            }
        }
    }

    /// An ASCII string with the escapes `\" \\ \/ \b \f \n \r \t`.
    fn string(&mut self) -> R<String> {
        self.eat(b'"')?;
        let start = self.p;
        // The common case: no escape. Plain bytes (printable ASCII but the quote and the
        // backslash) are skipped 32 at a time, each block checked whole, which vectorises.
        let plain = |c: u8| (0x20..0x80).contains(&c) && c != b'"' && c != b'\\';
        while let Some(block) = self.b.get(self.p..self.p + 32) {
            if !block.iter().fold(true, |all, &c| all & plain(c)) {
                break;
            }
            self.p += 32;
        }
        loop {
            let c = *self.b.get(self.p)?;
            match c {
                b'"' => {
                    let s = std::str::from_utf8(&self.b[start..self.p])
                        .ok()?
                        .to_string();
                    self.p += 1;
                    return Some(s);
                }
                b'\\' => break,
                0..=0x1f | 0x80..=0xff => return None,
                _ => self.p += 1,
            }
        }
        let mut out: Vec<u8> = self.b[start..self.p].to_vec();
        loop {
            let c = *self.b.get(self.p)?;
            self.p += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.b.get(self.p)?;
                    self.p += 1;
                    out.push(match e {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 8,
                        b'f' => 12,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        _ => return None,
                    });
                }
                0..=0x1f | 0x80..=0xff => return None,
                _ => out.push(c),
            }
        }
    }

    /// A JSON number literal. Up to 19 significant digits and a power of ten within ±22 of
    /// an exact mantissa below 2^53 give the float in one correctly rounded multiply or divide
    /// (Clinger's fast path); anything else goes through `str::parse`, which rounds correctly.
    fn number(&mut self) -> R<Num> {
        self.ws();
        let start = self.p;
        let b = self.b;
        let mut p = self.p;
        let negative = b.get(p) == Some(&b'-');
        if negative {
            p += 1;
        }
        let mut mantissa: u64 = 0;
        let mut digits = 0u32;
        match b.get(p)? {
            b'0' => p += 1,
            b'1'..=b'9' => {
                while let Some(&c) = b.get(p) {
                    if !c.is_ascii_digit() {
                        break;
                    }
                    if digits < 19 {
                        mantissa = mantissa * 10 + u64::from(c - b'0');
                    }
                    digits += 1;
                    p += 1;
                }
            }
            _ => return None,
        }
        let integer_digits = digits;
        let mut fraction_digits = 0i32;
        let mut float = false;
        if b.get(p) == Some(&b'.') {
            float = true;
            p += 1;
            let first = p;
            while let Some(&c) = b.get(p) {
                if !c.is_ascii_digit() {
                    break;
                }
                if digits < 19 {
                    mantissa = mantissa * 10 + u64::from(c - b'0');
                    fraction_digits += 1;
                }
                // Leading zeros of `0.000x` are not significant.
                if mantissa != 0 {
                    digits += 1;
                }
                p += 1;
            }
            if p == first {
                return None;
            }
        }
        let mut exponent = 0i32;
        if matches!(b.get(p), Some(b'e' | b'E')) {
            float = true;
            p += 1;
            let minus = match b.get(p) {
                Some(b'-') => {
                    p += 1;
                    true
                }
                Some(b'+') => {
                    p += 1;
                    false
                }
                _ => false,
            };
            let first = p;
            while let Some(&c) = b.get(p) {
                if !c.is_ascii_digit() {
                    break;
                }
                exponent = (exponent * 10 + i32::from(c - b'0')).min(100_000);
                p += 1;
            }
            if p == first {
                return None;
            }
            if minus {
                exponent = -exponent;
            }
        }
        self.p = p;
        if !float {
            if negative && mantissa == 0 {
                // serde_json reads `-0` as the float -0.0.
                return Some(Num::Float(-0.0));
            }
            if integer_digits > 19 {
                // serde_json reads such integers as floats; rare enough to leave to it.
                return None;
            }
            let v = i128::from(mantissa);
            return Some(Num::Int(if negative { -v } else { v }));
        }
        let e10 = exponent - fraction_digits;
        if digits <= 19 && mantissa <= 1 << 53 && (-22..=22).contains(&e10) {
            let m = mantissa as f64;
            let v = if e10 >= 0 {
                m * POW10[e10 as usize]
            } else {
                m / POW10[(-e10) as usize]
            };
            return Some(Num::Float(if negative { -v } else { v }));
        }
        let v: f64 = std::str::from_utf8(&b[start..p]).ok()?.parse().ok()?;
        if v.is_infinite() {
            return None;
        }
        Some(Num::Float(v))
    }

    /// A number read as serde reads an `f64`.
    #[inline]
    fn f64(&mut self) -> R<f64> {
        Some(match self.number()? {
            // serde_json: u64 or i64, then `as f64`.
            Num::Int(v) if v < 0 => i64::try_from(v).ok()? as f64,
            Num::Int(v) => u64::try_from(v).ok()? as f64,
            Num::Float(v) => v,
        })
    }

    fn i64(&mut self) -> R<i64> {
        match self.number()? {
            Num::Int(v) => i64::try_from(v).ok(),
            Num::Float(_) => None,
        }
    }

    fn u64(&mut self) -> R<u64> {
        match self.number()? {
            Num::Int(v) => u64::try_from(v).ok(),
            Num::Float(_) => None,
        }
    }

    fn u32(&mut self) -> R<u32> {
        u32::try_from(self.u64()?).ok()
    }

    /// `[a, b, …]` with `item` reading each element.
    fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        self.eat(b'[')?;
        self.enter()?;
        let mut out = Vec::new();
        if self.peek()? == b']' {
            self.p += 1;
            self.depth -= 1;
            return Some(out);
        }
        loop {
            out.push(item(self)?);
            match self.peek()? {
                b',' => self.p += 1,
                b']' => {
                    self.p += 1;
                    self.depth -= 1;
                    return Some(out);
                }
                _ => return None,
            }
        }
    }

    /// A list of numbers, allocated once at its length.
    fn f64s(&mut self) -> R<Vec<f64>> {
        self.with_f64s(<[f64]>::to_vec)
    }

    /// A detection's keypoints: read in place into a list of the last keypoints' length (in a
    /// results file they all have one), no longer than it reads.
    fn keypoints(&mut self) -> R<Vec<f64>> {
        let mut out = Vec::with_capacity(self.keypoints_len);
        self.f64s_into(&mut out)?;
        out.shrink_to_fit();
        self.keypoints_len = out.len();
        Some(out)
    }

    /// `[x, y, w, h]`, or `[]` as none, read without allocating.
    fn bbox(&mut self) -> R<Option<[f64; 4]>> {
        self.with_f64s(|v| match *v {
            [] => Some(None),
            [x, y, w, h] => Some(Some([x, y, w, h])),
            _ => None,
        })?
    }

    /// `[number, …]` read into the reused buffer, then `f` of it.
    fn with_f64s<T>(&mut self, f: impl FnOnce(&[f64]) -> T) -> R<T> {
        let mut buf = std::mem::take(&mut self.nums);
        buf.clear();
        let out = self.f64s_into(&mut buf).map(|()| f(&buf));
        self.nums = buf;
        out
    }

    /// `[number, …]` appended to `buf`.
    #[inline]
    fn f64s_into(&mut self, buf: &mut Vec<f64>) -> R<()> {
        self.eat(b'[')?;
        if self.peek()? != b']' {
            loop {
                buf.push(self.f64()?);
                match self.peek()? {
                    b',' => self.p += 1,
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.p += 1;
        Some(())
    }

    /// `{"key": value, …}` with `field` reading the value of each key (it is called with the
    /// reader just after the colon).
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> R<()>) -> R<()> {
        self.eat(b'{')?;
        self.enter()?;
        if self.peek()? == b'}' {
            self.p += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            let key = self.plain_str()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.p += 1,
                b'}' => {
                    self.p += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// Any value, checked and dropped.
    fn skip(&mut self) -> R<()> {
        match self.peek()? {
            b'{' => self.object(|r, _| r.skip()),
            b'[' => self.array(Self::skip).map(|_| ()),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }

    /// The end of the document: only whitespace may follow.
    fn end(&mut self) -> R<()> {
        self.ws();
        (self.p == self.b.len()).then_some(())
    }

    fn segmentation(&mut self) -> R<Segmentation> {
        match self.peek()? {
            b'[' => Some(Segmentation::Polygons(self.array(Self::f64s)?)),
            b'{' => {
                let mut size: Option<[u32; 2]> = None;
                let mut compressed: Option<String> = None;
                let mut counts: Option<Vec<u32>> = None;
                self.object(|r, key| {
                    match key {
                        b"size" => {
                            if size.is_some() {
                                return None;
                            }
                            let v = r.array(Self::u32)?;
                            size = Some(<[u32; 2]>::try_from(v).ok()?);
                        }
                        b"counts" => {
                            if compressed.is_some() || counts.is_some() {
                                return None;
                            }
                            if r.peek()? == b'"' {
                                compressed = Some(r.string()?);
                            } else {
                                counts = Some(r.array(Self::u32)?);
                            }
                        }
                        _ => r.skip()?,
                    }
                    Some(())
                })?;
                let [height, width] = size?;
                match (compressed, counts) {
                    (Some(counts), None) => Some(Segmentation::Compressed {
                        height,
                        width,
                        counts,
                    }),
                    (None, Some(counts)) => Some(Segmentation::Uncompressed {
                        height,
                        width,
                        counts,
                    }),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// An optional field: `null` is `None`.
    fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> R<T>) -> R<Option<T>> {
        if self.null()? {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }
}

/// Sets a field once; a second value gives up (serde: "duplicate field").
fn once<T>(slot: &mut Option<T>, value: T) -> R<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// A results document, or `None` to leave it to serde: its records in file order, in pieces
/// (whoever turns them into something else can free each piece as it goes). Large documents are
/// read in pieces of about [`PIECE_BYTES`], in parallel (see [`read_block`]).
pub(crate) fn results(bytes: &[u8]) -> Option<Vec<Vec<ResultRecord>>> {
    let Some(start) = array_start(bytes) else {
        // `[]`, or not something this reader reads.
        let mut r = Reader::new(bytes);
        r.eat(b'[')?;
        r.eat(b']')?;
        return r.end().map(|()| Vec::new());
    };
    let (pieces, next) = read_records(bytes, start, false)?;
    match next {
        Next::Closed(end) => {
            let mut r = Reader::new(bytes);
            r.p = end;
            r.end()?;
            Some(pieces)
        }
        Next::More(_) => None,
    }
}

/// A results file read `block` bytes at a time, the records of each block parsed (in
/// parallel pieces) before the next is read, so that the whole file is never in memory at
/// once; a record cut by a block's end is read again with the next. `Ok(None)` leaves the
/// document to serde, as [`results`] does (then its value or error).
pub(crate) fn results_from_reader(
    src: &mut impl Read,
    block: usize,
) -> std::io::Result<Option<Vec<Vec<ResultRecord>>>> {
    let mut buf = Vec::new();
    let mut more = fill(src, &mut buf, block)?;
    // The array's opening: `[` and whitespace, then a record or `]`.
    let mut start = loop {
        match array_start(&buf) {
            Some(start) => break start,
            None if more && buf.iter().all(|c| b" \n\r\t[".contains(c)) => {
                more = fill(src, &mut buf, block)?;
            }
            None => {
                // Possibly `[]`: the whole document decides.
                src.read_to_end(&mut buf)?;
                return Ok(results(&buf));
            }
        }
    };
    let mut pieces = Vec::new();
    loop {
        let Some((read, next)) = read_records(&buf, start, more) else {
            return Ok(None);
        };
        pieces.extend(read.into_iter().filter(|p| !p.is_empty()));
        match next {
            Next::Closed(end) => {
                // Only whitespace may follow, to the end of the file.
                let mut rest = buf.split_off(end);
                drop(buf);
                src.read_to_end(&mut rest)?;
                return Ok(Reader::new(&rest).end().map(|()| pieces));
            }
            Next::More(at) => {
                // No whole record in more than a block and more than any real record: one
                // the reader gives up on (serde decides), not one cut by the block's end.
                if !more || (at == start && buf.len() - start > block.max(MAX_RECORD_BYTES)) {
                    return Ok(None);
                }
                buf.drain(..at);
                start = 0;
                more = fill(src, &mut buf, block)?;
            }
        }
    }
}

/// Longer than any record of a results file the fast reader reads.
const MAX_RECORD_BYTES: usize = 64 << 20;

/// Appends up to `block` bytes of `src` to `buf`; false once `src` has ended.
fn fill(src: &mut impl Read, buf: &mut Vec<u8>, block: usize) -> std::io::Result<bool> {
    debug_assert!(block > 0, "blocks of no bytes never end");
    let n = src.by_ref().take(block as u64).read_to_end(buf)?;
    Ok(n == block)
}

/// Where the first record of a results array begins (`[`, whitespace, then `{`).
fn array_start(bytes: &[u8]) -> Option<usize> {
    let mut r = Reader::new(bytes);
    r.eat(b'[')?;
    (r.peek()? == b'{').then_some(r.p)
}

/// Below this size a block of results is read in one piece, by one thread.
const PARALLEL_BYTES: usize = 1 << 20;

/// About the size of a piece of a large block of results.
const PIECE_BYTES: usize = 8 << 20;

/// What follows the records a block gave.
enum Next {
    /// The array closed; its `]` ends before this position.
    Closed(usize),
    /// The block ended inside the array: the next record begins at this position (just after
    /// a comma), which the next block continues.
    More(usize),
}

/// The records of `bytes` from `start`, a record's start, in pieces (in parallel where the
/// block is large), and what follows them; `more` says that `bytes` may end inside the array
/// (a block of a file). `None` leaves the document to serde.
fn read_records(bytes: &[u8], start: usize, more: bool) -> Option<(Vec<Vec<ResultRecord>>, Next)> {
    let size = bytes.len() - start;
    let parts = if size >= PARALLEL_BYTES {
        rayon::current_num_threads().max(size / PIECE_BYTES)
    } else {
        1
    };
    if parts > 1 {
        if let Some(read) = read_block(bytes, start, parts, more) {
            return Some(read);
        }
    }
    read_block(bytes, start, 1, more)
}

/// `bytes` from `start` cut into `parts` pieces at guessed record boundaries (the first `{`
/// after a `,` past each even cut), each piece read by its own thread until it passes the next
/// piece's start. A guess is proven right when the piece before ends exactly on it: that
/// piece's reading began at a proven boundary, so it knows where the records are. Any piece
/// that fails or lands elsewhere (a guess inside a string) gives `None` (the caller reads the
/// block as one piece). The last piece reads to the array's end or, with `more`, to the last
/// whole record of the block.
fn read_block(
    bytes: &[u8],
    start: usize,
    parts: usize,
    more: bool,
) -> Option<(Vec<Vec<ResultRecord>>, Next)> {
    use rayon::prelude::*;
    let mut starts = vec![start];
    for k in 1..parts {
        let from = (start + (bytes.len() - start) * k / parts).max(starts[k - 1] + 1);
        let Some(guess) = next_record_start(bytes, from) else {
            break;
        };
        if guess <= starts[k - 1] {
            return None;
        }
        starts.push(guess);
    }
    starts.dedup();
    let last = starts.len() - 1;
    // Per piece: its records, and where it stopped (the next piece's start, or what follows).
    let pieces: Vec<Option<(Vec<ResultRecord>, Next)>> = (0..starts.len())
        .into_par_iter()
        .map(|k| {
            let stop = starts.get(k + 1).copied().unwrap_or(usize::MAX);
            let mut r = Reader::new(bytes);
            r.p = starts[k];
            r.depth = 1;
            let mut records = Vec::new();
            loop {
                let at = r.p;
                let cut = |records| (k == last && more).then_some((records, Next::More(at)));
                let Some(record) = result(&mut r) else {
                    return cut(records);
                };
                match r.peek() {
                    Some(b',') => {
                        records.push(record);
                        r.p += 1;
                        let after = r.p;
                        r.ws();
                        if r.p >= stop {
                            return Some((records, Next::More(r.p)));
                        }
                        if r.p == bytes.len() {
                            return (k == last && more).then_some((records, Next::More(after)));
                        }
                    }
                    Some(b']') => {
                        records.push(record);
                        r.p += 1;
                        return Some((records, Next::Closed(r.p)));
                    }
                    None => return cut(records),
                    Some(_) => return None,
                }
            }
        })
        .collect();
    let mut all = Vec::with_capacity(pieces.len());
    let mut next = None;
    for (k, piece) in pieces.into_iter().enumerate() {
        let (records, stopped) = piece?;
        if k < last {
            // Proven only where it ends on the next piece's start.
            match stopped {
                Next::More(end) if end == starts[k + 1] => {}
                _ => return None,
            }
        } else {
            next = Some(stopped);
        }
        all.push(records);
    }
    Some((all, next?))
}

/// The first `{` at or after `from` whose previous non-whitespace byte is a `,`.
fn next_record_start(bytes: &[u8], from: usize) -> Option<usize> {
    let mut p = from;
    loop {
        p += bytes.get(p..)?.iter().position(|&b| b == b'{')?;
        let before = bytes[..p]
            .iter()
            .rev()
            .find(|&&b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
        if before == Some(&b',') {
            return Some(p);
        }
        p += 1;
    }
}

/// One record of a results document.
fn result(r: &mut Reader<'_>) -> R<ResultRecord> {
    let (mut image_id, mut category_id, mut score) = (None, None, None);
    let (mut bbox, mut segmentation, mut keypoints) = (None, None, None);
    r.object(|r, key| match key {
        b"image_id" => once(&mut image_id, r.i64()?),
        b"category_id" => once(&mut category_id, r.i64()?),
        b"score" => once(&mut score, r.f64()?),
        b"bbox" => {
            let b = r.optional(Reader::bbox)?.flatten();
            once(&mut bbox, b)
        }
        b"segmentation" => once(&mut segmentation, r.optional(Reader::segmentation)?),
        b"keypoints" => once(&mut keypoints, r.optional(Reader::keypoints)?),
        _ => r.skip(),
    })?;
    Some(ResultRecord {
        image_id: image_id?,
        category_id: category_id?,
        score: score?,
        bbox: bbox.flatten(),
        segmentation: segmentation.flatten(),
        keypoints: keypoints.flatten(),
    })
}

/// A ground-truth document, or `None` to leave it to serde.
pub(crate) fn ground_truth(bytes: &[u8]) -> Option<GtLists> {
    let mut r = Reader::new(bytes);
    let (mut images, mut categories, mut annotations) = (None, None, None);
    r.object(|r, key| match key {
        b"images" => once(&mut images, r.array(image)?),
        b"categories" => once(&mut categories, r.array(category)?),
        b"annotations" => once(&mut annotations, r.array(annotation)?),
        _ => r.skip(),
    })?;
    r.end()?;
    Some(GtLists {
        images: images?,
        categories: categories?,
        annotations: annotations.unwrap_or_default(),
    })
}

fn image(r: &mut Reader<'_>) -> R<Image> {
    let (mut id, mut width, mut height) = (None, None, None);
    r.object(|r, key| match key {
        b"id" => once(&mut id, r.i64()?),
        b"width" => once(&mut width, r.optional(Reader::u32)?),
        b"height" => once(&mut height, r.optional(Reader::u32)?),
        _ => r.skip(),
    })?;
    Some(Image {
        id: id?,
        width: width.flatten(),
        height: height.flatten(),
    })
}

fn category(r: &mut Reader<'_>) -> R<Category> {
    let (mut id, mut name, mut keypoints) = (None, None, None);
    r.object(|r, key| match key {
        b"id" => once(&mut id, r.i64()?),
        b"name" => once(&mut name, r.string()?),
        b"keypoints" => once(&mut keypoints, r.array(Reader::string)?),
        _ => r.skip(),
    })?;
    Some(Category {
        id: id?,
        name: name.unwrap_or_default(),
        keypoints: keypoints.unwrap_or_default(),
    })
}

fn annotation(r: &mut Reader<'_>) -> R<GtAnnotation> {
    let (mut id, mut image_id, mut category_id, mut area) = (None, None, None, None);
    let (mut bbox, mut iscrowd, mut segmentation) = (None, None, None);
    let (mut keypoints, mut num_keypoints) = (None, None);
    r.object(|r, key| match key {
        b"id" => once(&mut id, r.i64()?),
        b"image_id" => once(&mut image_id, r.i64()?),
        b"category_id" => once(&mut category_id, r.i64()?),
        b"area" => once(&mut area, r.f64()?),
        b"bbox" => {
            let v = r.optional(Reader::f64s)?;
            let b = match v.as_deref() {
                None => None,
                Some(&[x, y, w, h]) => Some([x, y, w, h]),
                Some(_) => return None,
            };
            once(&mut bbox, b)
        }
        b"iscrowd" => {
            let v = match r.peek()? {
                b't' => r.literal(b"true").map(|()| true)?,
                b'f' => r.literal(b"false").map(|()| false)?,
                b'n' => r.literal(b"null").map(|()| false)?,
                _ => match r.number()? {
                    Num::Int(v) => v != 0,
                    Num::Float(_) => return None,
                },
            };
            once(&mut iscrowd, v)
        }
        b"segmentation" => once(&mut segmentation, r.optional(Reader::segmentation)?),
        b"keypoints" => once(&mut keypoints, r.optional(Reader::keypoints)?),
        b"num_keypoints" => once(&mut num_keypoints, r.optional(Reader::u64)?),
        _ => r.skip(),
    })?;
    Some(GtAnnotation {
        id: id?,
        image_id: image_id?,
        category_id: category_id?,
        bbox: bbox.flatten(),
        area: area?,
        iscrowd: iscrowd.unwrap_or(false),
        segmentation: segmentation.flatten(),
        keypoints: keypoints.flatten(),
        num_keypoints: num_keypoints.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of a document read in pieces, as one list.
    fn flat(pieces: Option<Vec<Vec<ResultRecord>>>) -> Option<Vec<ResultRecord>> {
        pieces.map(|p| p.into_iter().flatten().collect())
    }

    fn both_results(doc: &str) -> Option<Vec<ResultRecord>> {
        let fast = flat(results(doc.as_bytes()));
        let serde: Result<Vec<ResultRecord>, _> = serde_json::from_str(doc);
        if let Some(f) = &fast {
            assert_eq!(Some(f), serde.as_ref().ok(), "{doc}");
            for (a, b) in f.iter().zip(serde.as_ref().unwrap()) {
                assert_eq!(a.score.to_bits(), b.score.to_bits(), "{doc}");
            }
        }
        fast
    }

    #[test]
    fn results_read_as_serde_reads_them() {
        let doc = r#" [ {"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [1, 2.5, 3e1, 4E-1], "x": [{"a": null}, true, "s\n"]},
            {"image_id": -3, "category_id": 7, "score": -0, "bbox": [], "keypoints": [1, 2, 0.1]},
            {"image_id": 4, "category_id": 5, "score": 1, "segmentation": {"size": [2, 3], "counts": "0\\4"}},
            {"image_id": 4, "category_id": 5, "score": 0.30000000000000004, "segmentation": [[1, 2, 3, 4, 5, 6]], "bbox": null},
            {"image_id": 4, "category_id": 5, "score": 2.2250738585072011e-308, "segmentation": {"counts": [1, 2, 3], "size": [2, 3]}}] "#;
        let r = both_results(doc).expect("read");
        assert_eq!(r.len(), 5);
        assert_eq!(r[1].score.to_bits(), (-0f64).to_bits());
        assert_eq!(r[1].bbox, None);
        assert_eq!(
            r[2].segmentation,
            Some(Segmentation::Compressed {
                height: 2,
                width: 3,
                counts: "0\\4".into()
            })
        );
        assert_eq!(both_results("[]").map(|r| r.len()), Some(0));
    }

    #[test]
    fn what_it_leaves_to_serde() {
        for doc in [
            // Errors, which serde names.
            r#"[{"image_id": 1, "category_id": 2}]"#,
            r#"[{"image_id": 1.0, "category_id": 2, "score": 1}]"#,
            r#"[{"image_id": 1, "category_id": 2, "score": NaN}]"#,
            r#"[{"image_id": 1, "category_id": 2, "score": 1e999}]"#,
            r#"[{"image_id": 1, "image_id": 1, "category_id": 2, "score": 1}]"#,
            r#"[{"image_id": 1, "category_id": 2, "score": 1, "bbox": [1, 2, 3]}]"#,
            r#"[{"image_id": 01, "category_id": 2, "score": 1}]"#,
            r#"[{"image_id": 1, "category_id": 2, "score": 1.}]"#,
            r#"[{"image_id": 1, "category_id": 2, "score": 1},]"#,
            r#"[{"image_id": 1, "category_id": 2, "score": 1}] x"#,
            // Valid, but left to serde.
            r#"[{"image_id": 1, "category_id": 2, "score": 1, "note": "\u00e9"}]"#,
            "[{\"image_id\": 1, \"category_id\": 2, \"score\": 1, \"note\": \"\u{e9}\"}]",
            r#"[{"image_id": 1, "category_id": 2, "score": 18446744073709551616}]"#,
        ] {
            assert!(results(doc.as_bytes()).is_none(), "{doc}");
        }
    }

    #[test]
    fn ground_truth_reads_as_serde_reads_it() {
        let doc = r#"{"info": {"v": [1, 2]}, "images": [{"id": 1, "width": 4, "height": null, "file_name": "a.jpg"}],
            "categories": [{"id": 1, "name": "person", "keypoints": ["nose"], "skeleton": [[1, 2]]}, {"id": 2}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": true,
                             "keypoints": [1, 2, 2], "num_keypoints": 1, "segmentation": [[1, 2, 3, 4, 5, 6]]},
                            {"id": 6, "image_id": 1, "category_id": 2, "area": 0.5, "iscrowd": 0, "num_keypoints": null}]}"#;
        let fast = ground_truth(doc.as_bytes()).expect("read");
        #[derive(serde::Deserialize)]
        struct D {
            images: Vec<Image>,
            categories: Vec<Category>,
            annotations: Vec<GtAnnotation>,
        }
        let d: D = serde_json::from_str(doc).unwrap();
        assert_eq!(fast.images, d.images);
        assert_eq!(fast.categories, d.categories);
        assert_eq!(fast.annotations, d.annotations);
        assert!(fast.annotations[0].iscrowd && !fast.annotations[1].iscrowd);
        assert!(
            ground_truth(br#"{"images": [], "categories": [], "annotations": [{"id": 1}]}"#)
                .is_none()
        );
        assert!(ground_truth(br#"{"images": [], "annotations": []}"#).is_none());
    }

    /// Mutated documents: wherever the fast reader returns a value, serde returns the same
    /// one (bit for bit); it may give up where serde succeeds, never the reverse of a value.
    #[test]
    fn mutations_agree_with_serde() {
        let base = br#"[{"image_id": 12, "category_id": 3, "score": 0.125, "bbox": [1.5, -2, 3e2, 4], "keypoints": [1, 2, 1]},
            {"image_id": 1, "category_id": 2, "score": 1, "segmentation": {"size": [2, 3], "counts": "0\\4"}, "x": [null, true, false, "a"]}]"#;
        let alphabet = b"0123456789-+.eE,:[]{}\" nultrfsa\\";
        let mut draw = crate::lcg(20261206);
        let mut next = |n: usize| draw(n as u64) as usize;
        let (mut agreed, mut left) = (0, 0);
        for _ in 0..20000 {
            let mut doc = base.to_vec();
            for _ in 0..1 + next(3) {
                let at = next(doc.len());
                match next(3) {
                    0 => doc[at] = alphabet[next(alphabet.len())],
                    1 => {
                        doc.remove(at);
                    }
                    _ => doc.insert(at, alphabet[next(alphabet.len())]),
                }
            }
            let serde: Result<Vec<ResultRecord>, _> = serde_json::from_slice(&doc);
            match flat(results(&doc)) {
                Some(fast) => {
                    let serde = serde.unwrap_or_else(|e| {
                        panic!("{}: read, serde: {e}", String::from_utf8_lossy(&doc))
                    });
                    assert_eq!(fast, serde, "{}", String::from_utf8_lossy(&doc));
                    let bits = |r: &[ResultRecord]| -> Vec<u64> {
                        r.iter()
                            .flat_map(|r| {
                                std::iter::once(r.score)
                                    .chain(r.bbox.into_iter().flatten())
                                    .chain(r.keypoints.iter().flatten().copied())
                            })
                            .map(f64::to_bits)
                            .collect()
                    };
                    assert_eq!(bits(&fast), bits(&serde));
                    agreed += 1;
                }
                None => left += usize::from(serde.is_ok()),
            }
        }
        // Most mutations break the document; some still read.
        assert!(
            agreed > 1000,
            "{agreed} read, {left} valid ones left to serde"
        );
    }

    /// Strings around the 32-byte blocks of the fast scan: a quote, an escape, a control
    /// byte or a non-ASCII character at every position reads as serde reads it (or is left to
    /// serde).
    #[test]
    fn long_strings_read_as_serde_reads_them() {
        let mut checked = 0;
        for len in 0..80 {
            for at in 0..len {
                for special in ["\"", "\\\\", "\\n", "\n", "é", "\\u00e9", "o"] {
                    let body: String = (0..len)
                        .map(|i| {
                            if i == at {
                                special.to_string()
                            } else {
                                char::from(b'0' + (i % 40) as u8).to_string()
                            }
                        })
                        .collect();
                    let doc = format!(
                        r#"[{{"image_id": 1, "category_id": 2, "score": 1, "segmentation": {{"size": [2, 3], "counts": "{body}"}}}}]"#
                    );
                    let serde: Result<Vec<ResultRecord>, _> = serde_json::from_str(&doc);
                    if let Some(fast) = flat(results(doc.as_bytes())) {
                        assert_eq!(Some(fast), serde.ok(), "{doc}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 9000, "{checked}");
    }

    #[test]
    fn numbers_round_as_serde_rounds_them() {
        for literal in [
            "0",
            "-0",
            "-0.0",
            "0.1",
            "0.30000000000000004",
            "1e22",
            "1e23",
            "9007199254740993",
            "9007199254740993.0",
            "123456789012345678",
            "1234567890123456789.5",
            "0.000001234",
            "2.2250738585072011e-308",
            "4.9e-324",
            "1e-400",
            "1.7976931348623157e308",
            "1E-5",
            "123.456e-7",
            "5e-22",
            "7e22",
            "12345678901234567890",
            "-9223372036854775808",
            "0.1000000000000000055511151231257827",
            "3.14159265358979323846264338327950288",
        ] {
            let doc = format!(r#"[{{"image_id": 1, "category_id": 1, "score": {literal}}}]"#);
            let serde: Vec<ResultRecord> = serde_json::from_str(&doc).unwrap();
            if let Some(fast) = flat(results(doc.as_bytes())) {
                assert_eq!(
                    fast[0].score.to_bits(),
                    serde[0].score.to_bits(),
                    "{literal}"
                );
            }
        }
    }

    /// A document over the parallel size, read by 2 to 5 threads, equals serde's reading,
    /// also where a cut falls inside strings that look like records.
    #[test]
    fn parallel_reading_equals_serde() {
        let mut doc = String::from("[");
        let mut n = 0;
        while doc.len() < PARALLEL_BYTES + 50_000 {
            if n > 0 {
                doc.push_str(",\n ");
            }
            let note = if n % 7 == 0 {
                r#", "note": "}, {\"image_id\": 1, \"category_id\": 1, \"score\": 1}, {""#
            } else {
                ""
            };
            doc.push_str(&format!(
                r#"{{"image_id": {}, "category_id": {}, "score": 0.{}{note}, "bbox": [{}.25, 2, 3, 4]}}"#,
                n % 97,
                n % 5,
                n % 1000,
                n
            ));
            n += 1;
        }
        doc.push(']');
        let serde: Vec<ResultRecord> = serde_json::from_str(&doc).unwrap();
        for threads in 1..=5 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let fast = flat(pool.install(|| results(doc.as_bytes()))).expect("read");
            assert_eq!(fast, serde, "{threads} threads");
            // The pieces alone (no fallback to one thread) read it too where the cuts are
            // not inside a note.
            if let Some((parallel, _)) = read_block(doc.as_bytes(), 1, threads, false) {
                assert_eq!(flat(Some(parallel)), Some(serde.clone()));
            }
        }
        // Without the notes, every cut is proven and the pieces read it.
        let plain = doc.replace(
            r#", "note": "}, {\"image_id\": 1, \"category_id\": 1, \"score\": 1}, {""#,
            "",
        );
        let plain_serde: Vec<ResultRecord> = serde_json::from_str(&plain).unwrap();
        for threads in 2..=5 {
            let (pieces, _) = read_block(plain.as_bytes(), 1, threads, false).expect("read");
            assert_eq!(pieces.len(), threads);
            assert_eq!(flat(Some(pieces)), Some(plain_serde.clone()));
        }
        // Read a block at a time, the blocks cutting records anywhere (the notes too), with
        // readers that return less than asked.
        for (threads, block) in [
            (1, 100_000),
            (2, 4096),
            (3, 333_333),
            (2, 2_000_000),
            (1, 1 << 26),
        ] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut src = Trickle(doc.as_bytes(), 1000);
            let read = pool
                .install(|| results_from_reader(&mut src, block))
                .unwrap();
            assert_eq!(
                flat(read),
                Some(serde.clone()),
                "{threads} threads, blocks of {block}"
            );
        }
        // A broken document is left to serde, whatever the threads.
        let broken = doc.replacen("\"score\": 0.5", "\"score\": x", 1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert!(pool.install(|| results(broken.as_bytes())).is_none());
    }
    /// A reader that hands out at most `.1` bytes at a time.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(out.len()).min(self.1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Blocks of every small size over small documents: what the whole-document reader and
    /// serde give (or left to serde where the whole-document reader leaves it).
    #[test]
    fn block_reading_equals_whole_reading() {
        let docs = [
            r#" [ {"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [1, 2.5, 3e1, 4E-1], "x": [{"a": null}, true, "s\n"]},
            {"image_id": -3, "category_id": 7, "score": -0, "bbox": [], "keypoints": [1, 2, 0.1]} ,
            {"image_id": 4, "category_id": 5, "score": 1, "segmentation": {"size": [2, 3], "counts": "0\\4"}}] "#,
            "[]",
            " [ ] \n",
            "[{\"image_id\": 1, \"category_id\": 2, \"score\": 1, \"bbox\": [1, 2, 3, 4]}]",
            // Broken or left to serde.
            "[{\"image_id\": 1, \"category_id\": 2, \"score\": 1, \"bbox\": [1, 2, 3, 4]}] x",
            "[{\"image_id\": 1, \"category_id\": 2, \"score\": 1, \"bbox\": [1, 2, 3, 4]},]",
            "[{\"image_id\": 1, \"category_id\": 2, \"score\": 1, \"bbox\": [1, 2, 3, 4]}",
            "[{\"image_id\": 1, \"category_id\": 2, \"score\": 1, \"note\": \"é\"}, {\"image_id\": 1, \"category_id\": 2, \"score\": 1}]",
            "  ",
            "",
            "{}",
        ];
        for doc in docs {
            let whole = results(doc.as_bytes());
            if let Some(w) = &whole {
                let serde: Vec<ResultRecord> = serde_json::from_str(doc).unwrap();
                assert_eq!(flat(Some(w.clone())), Some(serde), "{doc}");
            }
            for block in 1..=doc.len() + 1 {
                for trickle in [1, 3, usize::MAX] {
                    let read =
                        results_from_reader(&mut Trickle(doc.as_bytes(), trickle), block).unwrap();
                    assert_eq!(
                        flat(read),
                        flat(whole.clone()),
                        "{doc:?} in blocks of {block}, {trickle} at a time"
                    );
                }
            }
        }
        assert!(results(b"[]").is_some_and(|p| p.is_empty()));
    }
}
