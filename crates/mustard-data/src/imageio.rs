//! Decoding and writing images, label maps and depth maps.

use std::path::Path;

use image::{DynamicImage, GrayImage, ImageBuffer, ImageDecoder, ImageReader, Luma, RgbImage};

use crate::{Error, Result};

/// A depth map in metres; 0 means "no depth".
pub type DepthMap = ImageBuffer<Luma<f32>, Vec<f32>>;

fn image_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn open(path: &Path) -> Result<DynamicImage> {
    if !path.is_file() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    // Read once: the truncation test looks at the bytes the decoder then reads.
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let reader = ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    // A JPEG decoder would fill the missing rows with grey without a word.
    if let Some(reason) = truncation(reader.format(), &Ends::of(&bytes)) {
        return Err(image_err(path, reason));
    }
    let mut decoder = reader.into_decoder().map_err(|e| image_err(path, e))?;
    let orientation = decoder.orientation().map_err(|e| image_err(path, e))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| image_err(path, e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// The extensions of the image files mustard reads (lower case): JPEG, PNG, WebP, BMP, TIFF
/// (its first page) and GIF (its first frame).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// The extensions of [`IMAGE_EXTENSIONS`] as users read them in messages: `.jpg, .jpeg, …`.
pub fn image_extensions_list() -> String {
    IMAGE_EXTENSIONS
        .iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `path`'s extension is one of [`IMAGE_EXTENSIONS`] (any case); the file itself is not
/// looked at.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Bytes of a file's end that the truncation test reads.
const TAIL: usize = 1024;

/// Refuses a file cut short, from its first and last bytes alone (one small read, nothing
/// decoded): a JPEG must hold its end-of-image marker (`FF D9`) and a PNG its `IEND` chunk in
/// their last KiB (files may carry a little padding after them), a GIF must end with its
/// trailer (`3B`, trailing zeros allowed), and a WebP or BMP must be as long as its header
/// says. A TIFF has no such end: one cut short is found when it is decoded.
pub fn check_complete(path: &Path, format: Option<image::ImageFormat>) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    match truncation(format, &Ends::read(&mut f, path)?) {
        Some(reason) => Err(image_err(path, reason)),
        None => Ok(()),
    }
}

/// A file's length, first bytes and last KiB.
struct Ends {
    len: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Ends {
    /// Reads them from `f` and leaves it at its start again.
    fn read(f: &mut std::fs::File, path: &Path) -> Result<Ends> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |e| Error::io(path, e);
        let len = f.metadata().map_err(io)?.len();
        let mut head = vec![0u8; 8];
        let n = f.read(&mut head).map_err(io)?;
        head.truncate(n);
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL as u64)))
            .map_err(io)?;
        let mut tail = Vec::with_capacity(TAIL);
        f.read_to_end(&mut tail).map_err(io)?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok(Ends { len, head, tail })
    }

    /// Those of a file read whole.
    fn of(bytes: &[u8]) -> Ends {
        Ends {
            len: bytes.len() as u64,
            head: bytes[..bytes.len().min(8)].to_vec(),
            tail: bytes[bytes.len().saturating_sub(TAIL)..].to_vec(),
        }
    }
}

/// Why a file of `format` with these ends is cut short; None when it is not (or its format
/// cannot tell).
fn truncation(format: Option<image::ImageFormat>, ends: &Ends) -> Option<String> {
    use image::ImageFormat::*;
    let Ends { len, head, tail } = ends;
    let len = *len;
    let declared = |at: usize, extra: u64| -> Option<u64> {
        let b = head.get(at..at + 4)?;
        Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) + extra)
    };
    let cut = |size: Option<u64>| {
        size.filter(|&s| s > len)
            .map(|s| format!("truncated: the file is {len} bytes, its header says {s}"))
    };
    match format? {
        // RIFF: the chunk size after the 8-byte header; BMP: the whole file's size (0 when
        // the writer left it out).
        WebP => cut(declared(4, 8)),
        Bmp => cut(declared(2, 0).filter(|&s| s > 0)),
        Jpeg => (!tail.windows(2).any(|w| w == [0xFF, 0xD9]))
            .then(|| "truncated: the JPEG data ends before its end-of-image marker".to_string()),
        Png => (!tail.windows(4).any(|w| w == b"IEND"))
            .then(|| "truncated: the PNG data ends before its IEND chunk".to_string()),
        Gif => (tail.iter().rev().find(|&&b| b != 0) != Some(&0x3B))
            .then(|| "truncated: the GIF data ends before its trailer".to_string()),
        _ => None,
    }
}

/// Decodes an image of any of [`IMAGE_EXTENSIONS`]' formats (8 or 16 bit, grey, RGB, RGBA or
/// palette; a TIFF's first page, a GIF's first frame) into 8-bit RGB, honouring the EXIF
/// orientation.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(open(path)?.to_rgb8())
}

/// The size of an image after EXIF orientation, reading only the header.
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    header(path, Kind::Image)
}

/// What a file of a record must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A picture (JPEG, PNG, WebP, BMP, TIFF or GIF; 8 or 16 bit, grey, RGB, RGBA or palette).
    Image,
    /// An 8-bit single-channel label map.
    Labels,
    /// A 16-bit single-channel depth map.
    Depth,
    /// A label map read as raw values ([`read_label_values`]): 8- or 16-bit grey or palette.
    LabelValues,
}

/// The dimensions of a file (after its EXIF orientation) read from its header alone, checking
/// that its format and colour type are what `kind` needs and that it is not cut short
/// ([`check_complete`]); nothing is decoded.
pub fn header(path: &Path, kind: Kind) -> Result<(u32, u32)> {
    if kind == Kind::LabelValues {
        return label_values_header(path);
    }
    // One open: the ends for the truncation test, then the header from the start.
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let ends = Ends::read(&mut file, path)?;
    let reader = ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if let Some(reason) = truncation(reader.format(), &ends) {
        return Err(image_err(path, reason));
    }
    let mut decoder = reader.into_decoder().map_err(|e| image_err(path, e))?;
    let colour = decoder.color_type();
    let wrong = match kind {
        Kind::Image => None,
        Kind::Labels => (colour != image::ColorType::L8)
            .then_some("a label map must be a single-channel 8-bit PNG"),
        Kind::Depth => (colour != image::ColorType::L16)
            .then_some("a depth map must be a single-channel 16-bit PNG"),
        Kind::LabelValues => None,
    };
    if let Some(reason) = wrong {
        return Err(image_err(path, reason));
    }
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().map_err(|e| image_err(path, e))?;
    use image::metadata::Orientation::*;
    Ok(match orientation {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        _ => (w, h),
    })
}

/// Fully decodes a file as `kind` needs it, returning its dimensions.
pub fn decode(path: &Path, kind: Kind) -> Result<(u32, u32)> {
    Ok(match kind {
        Kind::Image => read_rgb(path)?.dimensions(),
        Kind::Labels => read_labels(path)?.dimensions(),
        Kind::Depth => read_depth(path, 1.0)?.dimensions(),
        Kind::LabelValues => read_label_values(path)?.dimensions(),
    })
}

/// A label map as its raw values: class ids before any mapping to the model's classes.
pub type LabelValues = ImageBuffer<Luma<u16>, Vec<u16>>;

/// Opens a label-map PNG and reads its header (colour type, bit depth, size), checking that
/// it holds one value per pixel: 8-bit grey, 16-bit grey or palette indices.
fn label_png(path: &Path) -> Result<png::Reader<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // Raw values: no palette expansion, no 16 → 8 bit stripping.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let reader = decoder.read_info().map_err(|e| image_err(path, e))?;
    let info = reader.info();
    use png::{BitDepth, ColorType};
    match (info.color_type, info.bit_depth) {
        (ColorType::Grayscale, BitDepth::Eight | BitDepth::Sixteen)
        | (ColorType::Indexed, BitDepth::Eight) => Ok(reader),
        (c, b) => Err(image_err(
            path,
            format!(
                "a label map must be a PNG of 8- or 16-bit grey values or 8-bit palette indices, not {c:?} at {} bits",
                b as u8
            ),
        )),
    }
}

/// The size of a label-map PNG from its header ([`read_label_values`] reads it whole).
pub fn label_values_header(path: &Path) -> Result<(u32, u32)> {
    let reader = label_png(path)?;
    check_complete(path, Some(image::ImageFormat::Png))?;
    let info = reader.info();
    Ok((info.width, info.height))
}

/// Reads a label map's raw values: 8- or 16-bit grey (COCO-Stuff, ADE20K, Cityscapes) or the
/// palette indices of a palette PNG (Pascal VOC), never the colours.
pub fn read_label_values(path: &Path) -> Result<LabelValues> {
    let mut reader = label_png(path)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| image_err(path, "the image is too large"))?;
    let mut buf = vec![0u8; size];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| image_err(path, e))?;
    let (w, h) = (out.width, out.height);
    let values: Vec<u16> = match out.bit_depth {
        png::BitDepth::Sixteen => buf[..out.line_size * h as usize]
            .chunks(out.line_size)
            .flat_map(|row| {
                row[..2 * w as usize]
                    .chunks(2)
                    .map(|v| u16::from_be_bytes([v[0], v[1]]))
            })
            .collect(),
        _ => buf[..out.line_size * h as usize]
            .chunks(out.line_size)
            .flat_map(|row| row[..w as usize].iter().map(|&v| u16::from(v)))
            .collect(),
    };
    LabelValues::from_raw(w, h, values).ok_or_else(|| image_err(path, "truncated pixel data"))
}

/// Reads an 8-bit, single-channel label map.
pub fn read_labels(path: &Path) -> Result<GrayImage> {
    match open(path)? {
        DynamicImage::ImageLuma8(g) => Ok(g),
        _ => Err(Error::Image {
            path: path.to_path_buf(),
            reason: "a label map must be a single-channel 8-bit PNG".into(),
        }),
    }
}

/// Reads a 16-bit depth PNG and converts it to metres with `scale` (metres per unit).
pub fn read_depth(path: &Path, scale: f64) -> Result<DepthMap> {
    let img = open(path)?;
    let DynamicImage::ImageLuma16(raw) = img else {
        return Err(Error::Image {
            path: path.to_path_buf(),
            reason: "a depth map must be a single-channel 16-bit PNG".into(),
        });
    };
    let (w, h) = raw.dimensions();
    let data = raw
        .into_raw()
        .into_iter()
        .map(|v| (v as f64 * scale) as f32)
        .collect();
    Ok(DepthMap::from_raw(w, h, data).expect("sizes match"))
}

fn save(path: &Path, img: DynamicImage) -> Result<()> {
    let format = image::ImageFormat::from_path(path).map_err(|e| image_err(path, e))?;
    mustard_core::io::write_atomic(path, |tmp| {
        img.save_with_format(tmp, format)
            .map_err(|e| mustard_core::Error::Io {
                path: tmp.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })
    })?;
    Ok(())
}

/// Writes an RGB image (format from the extension: png or jpg) atomically.
pub fn write_rgb(path: &Path, img: &RgbImage) -> Result<()> {
    save(path, DynamicImage::ImageRgb8(img.clone()))
}

/// Writes an 8-bit label map as PNG atomically.
pub fn write_labels(path: &Path, img: &GrayImage) -> Result<()> {
    save(path, DynamicImage::ImageLuma8(img.clone()))
}

/// Writes a depth map in metres as a 16-bit PNG with `scale` metres per unit, atomically.
pub fn write_depth(path: &Path, depth: &DepthMap, scale: f64) -> Result<()> {
    let (w, h) = depth.dimensions();
    let raw: Vec<u16> = depth
        .as_raw()
        .iter()
        .map(|&m| (m as f64 / scale).round().clamp(0.0, 65535.0) as u16)
        .collect();
    save(
        path,
        DynamicImage::ImageLuma16(ImageBuffer::from_raw(w, h, raw).expect("sizes match")),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use image::ImageEncoder;

    use super::*;

    /// A JPEG cut short is an error naming the file, not a picture padded with grey, and its
    /// header check finds it without decoding.
    #[test]
    fn a_truncated_jpeg_is_an_error() {
        let dir = std::env::temp_dir().join(format!("mustard-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let whole = dir.join("whole.jpg");
        img.save(&whole).unwrap();
        let bytes = std::fs::read(&whole).unwrap();
        let cut = dir.join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        assert_eq!(read_rgb(&whole).unwrap().dimensions(), (64, 48));
        // A few bytes of padding after the end-of-image marker are fine.
        let padded = dir.join("padded.jpg");
        std::fs::write(&padded, [&bytes[..], &[0u8; 16]].concat()).unwrap();
        assert_eq!(read_rgb(&padded).unwrap().dimensions(), (64, 48));
        assert_eq!(
            read_rgb(&cut).unwrap_err().to_string(),
            format!(
                "{}: truncated: the JPEG data ends before its end-of-image marker",
                cut.display()
            )
        );
        assert_eq!(
            header(&cut, Kind::Image).unwrap_err().to_string(),
            format!(
                "{}: truncated: the JPEG data ends before its end-of-image marker",
                cut.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One picture in every format read: the same exact pixels back (WebP lossless, GIF from
    /// its palette), and each format cut short caught by the header check where it has an
    /// end or a declared size.
    #[test]
    fn every_format_reads_the_same_pixels_and_truncation_is_caught_from_the_header() {
        let dir = std::env::temp_dir().join(format!("mustard-formats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([(x * 50) as u8, (y * 100) as u8, ((x + y) * 20) as u8])
        });
        let write = |name: &str| -> PathBuf {
            let path = dir.join(name);
            let mut bytes = Vec::new();
            let raw = img.as_raw();
            let rgb = image::ExtendedColorType::Rgb8;
            match name.rsplit('.').next().unwrap() {
                "webp" => image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
                    .write_image(raw, 5, 3, rgb)
                    .unwrap(),
                "bmp" => image::codecs::bmp::BmpEncoder::new(&mut bytes)
                    .write_image(raw, 5, 3, rgb)
                    .unwrap(),
                "tiff" => image::codecs::tiff::TiffEncoder::new(std::io::Cursor::new(&mut bytes))
                    .write_image(raw, 5, 3, rgb)
                    .unwrap(),
                "gif" => {
                    let rgba = DynamicImage::ImageRgb8(img.clone()).to_rgba8();
                    image::codecs::gif::GifEncoder::new(&mut bytes)
                        .encode(rgba.as_raw(), 5, 3, image::ExtendedColorType::Rgba8)
                        .unwrap()
                }
                _ => img.save(&path).unwrap(),
            }
            if !bytes.is_empty() {
                std::fs::write(&path, &bytes).unwrap();
            }
            path
        };
        for name in ["a.png", "a.jpg", "a.webp", "a.bmp", "a.tiff", "a.gif"] {
            let path = write(name);
            assert!(has_image_extension(&path), "{name}");
            assert_eq!(header(&path, Kind::Image).unwrap(), (5, 3), "{name}");
            let back = read_rgb(&path).unwrap();
            assert_eq!(back.dimensions(), (5, 3), "{name}");
            if name != "a.jpg" {
                assert_eq!(back.as_raw(), img.as_raw(), "{name}: pixels differ");
            }
            let bytes = std::fs::read(&path).unwrap();
            let cut = dir.join(format!("cut-{name}"));
            std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).unwrap();
            let reason = match name {
                "a.png" => Some("truncated: the PNG data ends before its IEND chunk".to_string()),
                "a.jpg" => {
                    Some("truncated: the JPEG data ends before its end-of-image marker".to_string())
                }
                "a.gif" => Some("truncated: the GIF data ends before its trailer".to_string()),
                "a.webp" | "a.bmp" => Some(format!(
                    "truncated: the file is {} bytes, its header says {}",
                    bytes.len() * 3 / 4,
                    bytes.len()
                )),
                _ => None,
            };
            match reason {
                Some(reason) => {
                    let expected = format!("{}: {reason}", cut.display());
                    assert_eq!(header(&cut, Kind::Image).unwrap_err().to_string(), expected);
                    assert_eq!(read_rgb(&cut).unwrap_err().to_string(), expected);
                }
                // A TIFF has no end marker: this one keeps its directory after the pixels, so
                // its header fails to read, and decoding fails; neither panics.
                None => {
                    let err = header(&cut, Kind::Image).unwrap_err().to_string();
                    assert!(err.starts_with(&format!("{}: ", cut.display())), "{err}");
                    assert!(read_rgb(&cut).is_err(), "{name}");
                }
            }
        }
        assert!(has_image_extension(Path::new("x/Y.JPEG")));
        assert!(!has_image_extension(Path::new("notes.txt")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A PNG whose EXIF says "rotate 90° clockwise" (orientation 6) decodes rotated.
    #[test]
    fn exif_orientation_is_honoured() {
        let dir = std::env::temp_dir().join(format!("mustard-exif-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rotated.png");
        // 3 x 2 pixels, red at (0, 0).
        let mut img = RgbImage::new(3, 2);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        // TIFF header (big endian), one IFD entry: tag 0x0112 (orientation), SHORT, value 6.
        let exif = vec![
            0x4D, 0x4D, 0x00, 0x2A, 0x00, 0x00, 0x00, 0x08, 0x00, 0x01, 0x01, 0x12, 0x00, 0x03,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let mut bytes = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
        encoder.set_exif_metadata(exif).unwrap();
        encoder
            .write_image(img.as_raw(), 3, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        std::fs::write(&path, bytes).unwrap();
        let decoded = read_rgb(&path).unwrap();
        assert_eq!(decoded.dimensions(), (2, 3));
        assert_eq!(dimensions(&path).unwrap(), (2, 3));
        // Rotating clockwise moves the top-left pixel to the top-right.
        assert_eq!(decoded.get_pixel(1, 0).0, [255, 0, 0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_pixel_format_decodes_to_rgb_and_depth_round_trips() {
        let dir = std::env::temp_dir().join(format!("mustard-imageio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let grey =
            DynamicImage::ImageLuma8(GrayImage::from_fn(3, 2, |x, y| Luma([(10 * x + y) as u8])));
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(3, 2, |x, _| {
            image::Rgba([x as u8, 1, 2, 128])
        }));
        let deep = DynamicImage::ImageRgb16(ImageBuffer::from_fn(3, 2, |x, _| {
            image::Rgb([x as u16 * 257, 0, 65535])
        }));
        for (name, img) in [("grey.png", grey), ("rgba.png", rgba), ("deep.png", deep)] {
            let p = dir.join(name);
            img.save(&p).unwrap();
            let rgb = read_rgb(&p).unwrap();
            assert_eq!(rgb.dimensions(), (3, 2), "{name}");
            assert_eq!(dimensions(&p).unwrap(), (3, 2));
        }
        assert_eq!(
            read_rgb(&dir.join("grey.png")).unwrap().get_pixel(2, 1).0,
            [21, 21, 21]
        );
        assert_eq!(
            read_rgb(&dir.join("deep.png")).unwrap().get_pixel(1, 0).0,
            [1, 0, 255]
        );

        let depth = DepthMap::from_fn(4, 2, |x, y| Luma([x as f32 * 1.5 + y as f32 * 0.001]));
        write_depth(&dir.join("d.png"), &depth, 0.001).unwrap();
        let back = read_depth(&dir.join("d.png"), 0.001).unwrap();
        for (a, b) in depth.as_raw().iter().zip(back.as_raw()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        std::fs::write(dir.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let err = read_rgb(&dir.join("broken.png")).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: ", dir.join("broken.png").display())),
            "{err}"
        );
        assert_eq!(
            read_rgb(&dir.join("none.png")).unwrap_err().to_string(),
            format!("{}: no such file", dir.join("none.png").display())
        );
        assert_eq!(
            read_depth(&dir.join("grey.png"), 0.001)
                .unwrap_err()
                .to_string(),
            format!(
                "{}: a depth map must be a single-channel 16-bit PNG",
                dir.join("grey.png").display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
