//! The national reference files: the synthetic estate loads, and a bad row fails the whole
//! file with its position.

use super::*;

pub(super) const EPRACCUR: &[u8] = include_bytes!("../../../../data/epraccur.csv");
pub(super) const SUPPLIERS: &[u8] = include_bytes!("../../../../data/gp-system-suppliers.csv");

pub(super) fn load(practices: &[u8], suppliers: &[u8]) -> Result<Estate, crate::EstateError> {
    Estate::parse(
        Source {
            name: "epraccur.csv",
            bytes: practices,
        },
        Source {
            name: "gp-system-suppliers.csv",
            bytes: suppliers,
        },
    )
}

#[test]
fn synthetic_estate_loads_with_the_right_counts() {
    let estate = load(EPRACCUR, SUPPLIERS).expect("the synthetic estate loads");
    assert_eq!(estate.len(), 6_400, "GP practices (setting 4) of any status");
    let active = estate.active_by_supplier();
    let counts: Vec<(&str, usize)> = active.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(
        counts,
        [
            ("cegedim", 178),
            ("emis", 3_386),
            ("microtest", 178),
            ("tpp", 2_558)
        ]
    );
    assert_eq!(active.values().sum::<usize>(), 6_300);
    let emis = estate.for_supplier(&SupplierId::parse("emis").expect("emis"));
    assert!(emis.practices().all(|p| p.supplier.as_str() == "emis"));
    // The index finds every practice under its own code, in both estates, and the order is by code.
    for e in [&estate, &emis] {
        assert!(e.practices().all(|p| e.get(&p.ods) == Some(p)));
        assert!(
            e.practices()
                .zip(e.practices().skip(1))
                .all(|(a, b)| a.ods < b.ods)
        );
    }
    assert_eq!(emis.len(), emis.practices().count());
    assert!(emis.get(&OdsCode::parse("Y99999").expect("ods")).is_none());
    let p = estate
        .get(&OdsCode::parse("L56296").expect("ods"))
        .expect("first row");
    assert_eq!(
        (p.region.as_str(), p.icb.as_str(), p.sub_icb.as_str()),
        ("Y60", "QN7", "33G")
    );
}

/// Replaces one field of one line of the practice file.
fn corrupt(line: usize, column: usize, value: &str) -> Vec<u8> {
    let text = std::str::from_utf8(EPRACCUR).expect("utf-8");
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    let mut fields: Vec<String> = lines[line - 1].split("\",\"").map(str::to_owned).collect();
    let last = fields.len() - 1;
    // The split leaves the row's opening and closing quotes on the first and last fields.
    fields[column - 1] = match column - 1 {
        0 => format!("\"{value}"),
        i if i == last => format!("{value}\""),
        _ => value.to_owned(),
    };
    lines[line - 1] = fields.join("\",\"");
    lines.join("\r\n").into_bytes()
}

#[test]
fn a_bad_row_fails_the_whole_file_with_its_position() {
    let cases = [
        (corrupt(4_321, 13, "X"), "epraccur.csv:4321:13: status code \"X\""),
        (corrupt(17, 1, "1234"), "epraccur.csv:17:1: practice code"),
        (corrupt(2, 3, "Y99"), "epraccur.csv:2:3: region code"),
        (corrupt(6_500, 4, "ZZZ"), "epraccur.csv:6500:4: ICB code"),
        (corrupt(9, 15, "X"), "epraccur.csv:9:15: sub-ICB"),
        (corrupt(9, 26, "four"), "epraccur.csv:9:26: prescribing setting"),
    ];
    for (bytes, want) in cases {
        let err = load(&bytes, SUPPLIERS).expect_err(want).to_string();
        assert!(err.starts_with(want), "got {err:?}, want {want:?}");
    }
    let short = b"\"A81001\",\"X\"\r\n";
    let err = load(short, SUPPLIERS).expect_err("short row").to_string();
    assert_eq!(err, "epraccur.csv:1: expected 27 columns, found 2");

    let mut map = SUPPLIERS.to_vec();
    map.extend_from_slice(b"A00758,emis\n");
    let err = load(EPRACCUR, &map).expect_err("duplicate").to_string();
    assert!(
        err.starts_with("gp-system-suppliers.csv:6402:1: practice A00758 appears more than once"),
        "{err}"
    );
    let err = load(EPRACCUR, b"ods_code,supplier\n")
        .expect_err("unmapped")
        .to_string();
    assert!(
        err.contains("has no supplier in gp-system-suppliers.csv"),
        "{err}"
    );
}
