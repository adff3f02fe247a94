//! The estate: GP practices read from the national ODS practice file (`epraccur`) and the
//! practice-to-supplier map.
//!
//! Parsing works on bytes the caller has read, so this module does no I/O. A malformed file is
//! refused whole, with the file, line and column of the first fault.

use std::collections::{BTreeMap, HashMap};

use crate::{
    id::{IcbCode, OdsCode, RegionCode, SubIcbCode, SupplierId},
    scope::{Practice, PracticeStatus},
};

/// Columns of the national practice file this loader reads (zero-based).
mod col {
    pub const CODE: usize = 0;
    pub const NAME: usize = 1;
    pub const REGION: usize = 2;
    pub const ICB: usize = 3;
    pub const STATUS: usize = 12;
    pub const SUB_ICB: usize = 14;
    pub const SETTING: usize = 25;
    pub const COUNT: usize = 27;
}

/// Prescribing setting of a GP practice; other settings are not GP practices.
const GP_PRACTICE_SETTING: &str = "4";

/// A fault in a reference file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}{}: {message}", column.map(|c| format!(":{c}")).unwrap_or_default())]
pub struct EstateError {
    /// The file's name as the caller gave it.
    pub file: String,
    /// One-based line number.
    pub line: u64,
    /// One-based column (field) number, where one field is at fault.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// GP practices by ODS code: in code order, with a hash index for lookups (one per read).
#[derive(Debug, Clone, Default)]
pub struct Estate {
    /// Sorted by ODS code, codes unique.
    practices: Vec<Practice>,
    /// Position in `practices` by code.
    index: crate::rules::FastMap<OdsCode, u32>,
}

impl PartialEq for Estate {
    fn eq(&self, other: &Self) -> bool {
        self.practices == other.practices
    }
}

impl Eq for Estate {}

/// A file to parse: its display name and contents.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Name used in errors, usually the path.
    pub name: &'a str,
    /// The file's bytes.
    pub bytes: &'a [u8],
}

impl Estate {
    /// Reads the national practice file and the supplier map. Only GP practices (prescribing
    /// setting 4) are kept; every one of them must have a supplier in the map.
    pub fn parse(practice_file: Source<'_>, supplier_map: Source<'_>) -> Result<Self, EstateError> {
        let suppliers = parse_supplier_map(supplier_map)?;
        let file = practice_file.name;
        let err = |line: u64, column: Option<usize>, message: String| EstateError {
            file: file.to_owned(),
            line,
            column,
            message,
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(practice_file.bytes);
        let mut practices = BTreeMap::new();
        let mut record = csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let line = line_of(practice_file.bytes, e.position());
                    return Err(err(line, None, format!("unreadable CSV: {e}")));
                }
            }
            let pos = record.position().cloned();
            let line = || line_of(practice_file.bytes, pos.as_ref());
            if record.len() != col::COUNT {
                return Err(err(
                    line(),
                    None,
                    format!("expected {} columns, found {}", col::COUNT, record.len()),
                ));
            }
            let field = |c: usize| record.get(c).unwrap_or_default();
            if field(col::SETTING) != GP_PRACTICE_SETTING {
                if field(col::SETTING).parse::<u32>().is_err() {
                    return Err(err(
                        line(),
                        Some(col::SETTING + 1),
                        format!("prescribing setting {:?} is not a number", field(col::SETTING)),
                    ));
                }
                continue;
            }
            let at = |c: usize| move |e: String| err(line(), Some(c + 1), e);
            let ods = OdsCode::parse(field(col::CODE)).map_err(|e| at(col::CODE)(e.to_string()))?;
            let practice = Practice {
                ods,
                name: field(col::NAME).to_owned(),
                region: RegionCode::parse_region(field(col::REGION))
                    .map_err(|e| at(col::REGION)(e.to_string()))?,
                icb: IcbCode::parse(field(col::ICB)).map_err(|e| at(col::ICB)(e.to_string()))?,
                sub_icb: SubIcbCode::parse(field(col::SUB_ICB))
                    .map_err(|e| at(col::SUB_ICB)(e.to_string()))?,
                status: PracticeStatus::from_code(field(col::STATUS)).ok_or_else(|| {
                    at(col::STATUS)(format!(
                        "status code {:?} is not one of A, C, D, P",
                        field(col::STATUS)
                    ))
                })?,
                supplier: suppliers.get(&ods).cloned().ok_or_else(|| {
                    at(col::CODE)(format!(
                        "GP practice {ods} has no supplier in {}",
                        supplier_map.name
                    ))
                })?,
            };
            if practices.insert(ods, practice).is_some() {
                return Err(at(col::CODE)(format!("practice {ods} appears more than once")));
            }
        }
        Ok(Estate::from_map(practices))
    }

    /// The estate of practices already keyed (and so ordered and unique) by code.
    fn from_map(by_code: BTreeMap<OdsCode, Practice>) -> Estate {
        let practices: Vec<Practice> = by_code.into_values().collect();
        let index = practices
            .iter()
            .enumerate()
            .map(|(i, p)| (p.ods, i as u32))
            .collect();
        Estate { practices, index }
    }

    /// Every practice, by ODS code.
    pub fn practices(&self) -> impl ExactSizeIterator<Item = &Practice> {
        self.practices.iter()
    }

    /// One practice.
    pub fn get(&self, ods: &OdsCode) -> Option<&Practice> {
        self.index.get(ods).map(|&i| &self.practices[i as usize])
    }

    /// How many practices the estate holds (any status).
    pub fn len(&self) -> usize {
        self.practices.len()
    }

    /// Whether the estate is empty.
    pub fn is_empty(&self) -> bool {
        self.practices.is_empty()
    }

    /// Only the practices of one supplier.
    pub fn for_supplier(&self, supplier: &SupplierId) -> Estate {
        self.practices
            .iter()
            .filter(|p| p.supplier == *supplier)
            .cloned()
            .collect()
    }

    /// Active practices per supplier.
    pub fn active_by_supplier(&self) -> BTreeMap<SupplierId, usize> {
        let mut counts = BTreeMap::new();
        for p in self
            .practices
            .iter()
            .filter(|p| p.status == PracticeStatus::Active)
        {
            *counts.entry(p.supplier.clone()).or_default() += 1;
        }
        counts
    }
}

impl FromIterator<Practice> for Estate {
    /// An estate of these practices; of two with one code, the later wins.
    fn from_iter<I: IntoIterator<Item = Practice>>(iter: I) -> Self {
        Estate::from_map(iter.into_iter().map(|p| (p.ods, p)).collect())
    }
}

/// Reads `ods_code,supplier` rows (with that header).
fn parse_supplier_map(src: Source<'_>) -> Result<HashMap<OdsCode, SupplierId>, EstateError> {
    let err = |line: u64, column: Option<usize>, message: String| EstateError {
        file: src.name.to_owned(),
        line,
        column,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(src.bytes);
    let headers = reader
        .headers()
        .map_err(|e| err(1, None, format!("unreadable CSV: {e}")))?;
    if headers.iter().collect::<Vec<_>>() != ["ods_code", "supplier"] {
        return Err(err(1, None, "expected the header ods_code,supplier".to_owned()));
    }
    let mut map = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(err(
                    line_of(src.bytes, e.position()),
                    None,
                    format!("unreadable CSV: {e}"),
                ));
            }
        }
        let pos = record.position().cloned();
        let line = || line_of(src.bytes, pos.as_ref());
        if record.len() != 2 {
            return Err(err(
                line(),
                None,
                format!("expected 2 columns, found {}", record.len()),
            ));
        }
        let ods = OdsCode::parse(&record[0]).map_err(|e| err(line(), Some(1), e.to_string()))?;
        let supplier = SupplierId::parse(&record[1]).map_err(|e| err(line(), Some(2), e.to_string()))?;
        if map.insert(ods, supplier).is_some() {
            return Err(err(
                line(),
                Some(1),
                format!("practice {ods} appears more than once"),
            ));
        }
    }
    Ok(map)
}

/// The one-based line a record starts on. The csv crate's own line count is off by one after
/// CRLF line ends, and its byte offset points at the `\n` that ends the previous record, so
/// count the line feeds up to and including that byte. It scans
/// from the start of the file, so it is called only on the error paths.
fn line_of(bytes: &[u8], pos: Option<&csv::Position>) -> u64 {
    let Some(pos) = pos else { return 0 };
    let end = usize::try_from(pos.byte()).map_or(bytes.len(), |b| (b + 1).min(bytes.len()));
    bytes[..end].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}
