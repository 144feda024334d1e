use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::rle::Rle;
use crate::{Error, Result};

/// The `segmentation` field of a COCO annotation or result.
#[derive(Clone, Debug, PartialEq)]
pub enum Segmentation {
    /// Polygons `[[x0, y0, x1, y1, …], …]` in pixels of the image; the mask is their union.
    Polygons(Vec<Vec<f64>>),
    /// `{"size": [h, w], "counts": [c0, c1, …]}`: run lengths, column by column.
    Uncompressed {
        /// Mask height.
        height: u32,
        /// Mask width.
        width: u32,
        /// Run lengths, alternating 0s and 1s, starting with 0s.
        counts: Vec<u32>,
    },
    /// `{"size": [h, w], "counts": "…"}`: the run lengths in pycocotools' string code.
    Compressed {
        /// Mask height.
        height: u32,
        /// Mask width.
        width: u32,
        /// The string of [`Rle::to_compressed`].
        counts: String,
    },
}

impl Segmentation {
    /// The mask, as pycocotools' `annToRLE` builds it: polygons are rasterised at the image's
    /// size (`image` is `(height, width)`), RLEs keep their own size.
    pub fn to_rle(&self, image: Option<(u32, u32)>) -> Result<Rle> {
        match self {
            Segmentation::Polygons(polygons) => {
                let (h, w) = image.ok_or_else(|| {
                    Error::mask("polygons need the image's height and width, which are missing")
                })?;
                Rle::from_polygons(polygons, h, w)
            }
            Segmentation::Uncompressed {
                height,
                width,
                counts,
            } => Rle::new(*height, *width, counts.clone()),
            Segmentation::Compressed {
                height,
                width,
                counts,
            } => Rle::from_compressed(counts, *height, *width),
        }
    }

    /// The mask's area and bounding box, as [`Segmentation::to_rle`] then [`Rle::area`] and
    /// [`Rle::to_bbox`] give them (and the same errors); a compressed string is read without
    /// building the mask.
    pub fn area_and_bbox(&self, image: Option<(u32, u32)>) -> Result<(u64, [f64; 4])> {
        match self {
            Segmentation::Compressed {
                height,
                width,
                counts,
            } => Rle::compressed_area_and_bbox(counts, *height, *width),
            _ => self.to_rle(image).map(|r| (r.area(), r.to_bbox())),
        }
    }
}

impl From<&Rle> for Segmentation {
    fn from(rle: &Rle) -> Self {
        Segmentation::Compressed {
            height: rle.height(),
            width: rle.width(),
            counts: rle.to_compressed(),
        }
    }
}

enum Counts {
    Compressed(String),
    Uncompressed(Vec<u32>),
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor;
        impl<'de> Visitor<'de> for CountsVisitor {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RLE string or a list of run lengths")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Counts, E> {
                Ok(Counts::Compressed(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Counts, A::Error> {
                let mut counts = Vec::new();
                while let Some(c) = seq.next_element::<u32>()? {
                    counts.push(c);
                }
                Ok(Counts::Uncompressed(counts))
            }
        }
        deserializer.deserialize_any(CountsVisitor)
    }
}

impl<'de> Deserialize<'de> for Segmentation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SegmentationVisitor;
        impl<'de> Visitor<'de> for SegmentationVisitor {
            type Value = Segmentation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of polygons or an RLE object {\"size\", \"counts\"}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Segmentation, A::Error> {
                let mut polygons = Vec::new();
                while let Some(p) = seq.next_element::<Vec<f64>>()? {
                    polygons.push(p);
                }
                Ok(Segmentation::Polygons(polygons))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Segmentation, A::Error> {
                let mut size: Option<[u32; 2]> = None;
                let mut counts: Option<Counts> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "size" => size = Some(map.next_value()?),
                        "counts" => counts = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let [height, width] = size.ok_or_else(|| de::Error::missing_field("size"))?;
                match counts.ok_or_else(|| de::Error::missing_field("counts"))? {
                    Counts::Compressed(counts) => Ok(Segmentation::Compressed {
                        height,
                        width,
                        counts,
                    }),
                    Counts::Uncompressed(counts) => Ok(Segmentation::Uncompressed {
                        height,
                        width,
                        counts,
                    }),
                }
            }
        }
        deserializer.deserialize_any(SegmentationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_coco_forms() {
        let p: Segmentation = serde_json::from_str("[[1, 2, 3, 4, 5, 6.5]]").unwrap();
        assert_eq!(
            p,
            Segmentation::Polygons(vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]])
        );
        let u: Segmentation =
            serde_json::from_str(r#"{"counts": [1, 2, 3], "size": [2, 3], "x": null}"#).unwrap();
        assert_eq!(
            u,
            Segmentation::Uncompressed {
                height: 2,
                width: 3,
                counts: vec![1, 2, 3]
            }
        );
        let c: Segmentation = serde_json::from_str(r#"{"size": [2, 2], "counts": "04"}"#).unwrap();
        assert_eq!(c.to_rle(None).unwrap().counts(), [0, 4]);
        assert_eq!(u.to_rle(None).unwrap().area(), 2);
        assert_eq!(
            p.to_rle(None).unwrap_err().to_string(),
            "invalid mask: polygons need the image's height and width, which are missing"
        );
        let e = serde_json::from_str::<Segmentation>(r#"{"counts": "04"}"#).unwrap_err();
        assert_eq!(e.to_string(), "missing field `size` at line 1 column 16");
        let e = serde_json::from_str::<Segmentation>("7").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid type: integer `7`, expected a list of polygons or an RLE object {\"size\", \"counts\"} at line 1 column 1"
        );
    }
}
