//! Offers and requests from the command line's words, with errors that
//! name the word that is wrong (`--gpus x`, `--mem 4Q`).

use std::collections::BTreeMap;

use super::{Amount, NamedResource, ResourceError, ResourceOffer, ResourceRequest, AMOUNT_UNITS};

/// Decimal digits an [`Amount`] keeps.
const AMOUNT_DECIMALS: usize = 4;

/// Parses a non-negative decimal with up to four decimals (`2`, `0.5`).
pub(super) fn parse_amount(flag: &'static str, word: &str) -> Result<Amount, ResourceError> {
    let bad = |reason| ResourceError::BadValue {
        flag,
        value: word.to_string(),
        reason,
    };
    let (whole, frac) = word.split_once('.').unwrap_or((word, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) || word.ends_with('.') {
        return Err(bad("not a number"));
    }
    if frac.len() > AMOUNT_DECIMALS {
        return Err(bad("more than four decimals"));
    }
    let whole: u64 = whole.parse().map_err(|_| bad("too large"))?;
    let mut frac_units: u64 = 0;
    if !frac.is_empty() {
        let padded = format!("{frac:0<width$}", width = AMOUNT_DECIMALS);
        frac_units = padded.parse().map_err(|_| bad("not a number"))?;
    }
    whole
        .checked_mul(AMOUNT_UNITS)
        .and_then(|w| w.checked_add(frac_units))
        .map(Amount)
        .ok_or_else(|| bad("too large"))
}

/// Parses a whole count (`--cpus 4`).
fn parse_count(flag: &'static str, word: &str) -> Result<u32, ResourceError> {
    let bad = |reason| ResourceError::BadValue {
        flag,
        value: word.to_string(),
        reason,
    };
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a whole number"));
    }
    word.parse().map_err(|_| bad("too large"))
}

/// Parses a size in bytes: a number (decimals allowed) with an optional
/// `K`, `M`, `G`, `T` or `P` suffix in powers of 1024, optionally followed
/// by `iB` or `B` (`4G`, `512MiB`, `1.5T`, `1000`).
pub fn parse_size(flag: &'static str, word: &str) -> Result<u64, ResourceError> {
    let bad = || ResourceError::BadSize {
        flag,
        value: word.to_string(),
    };
    let lower = word.trim().to_ascii_lowercase();
    let number_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, suffix) = lower.split_at(number_end);
    let shift = match suffix.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    if suffix == "ib" {
        return Err(bad());
    }
    let amount = parse_amount(flag, number).map_err(|_| bad())?;
    // amount is in 1/AMOUNT_UNITS; scale before dividing to keep fractions.
    let bytes = u128::from(amount.0) << shift;
    u64::try_from(bytes / u128::from(AMOUNT_UNITS)).map_err(|_| bad())
}

/// A size as `zcluster status` shows it (`16G`, `1.5G`, `300K`, `17`).
pub(super) fn format_size(bytes: u64) -> String {
    const SUFFIXES: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, suffix) in SUFFIXES {
        let unit = 1u64 << shift;
        if bytes >= unit {
            let tenths = (u128::from(bytes) * 10 / u128::from(unit)) as u64;
            return if tenths % 10 == 0 {
                format!("{}{suffix}", tenths / 10)
            } else {
                format!("{}.{}{suffix}", tenths / 10, tenths % 10)
            };
        }
    }
    bytes.to_string()
}

/// Parses a list of device ids (`0,1,3`, `a,b`, `3,`): non-empty ids of
/// letters, digits, `-`, `_`, `.` or `:`, none twice.
fn parse_ids(
    word: &str,
    bad: impl Fn(&'static str) -> ResourceError,
) -> Result<Vec<String>, ResourceError> {
    let mut ids: Vec<String> = Vec::new();
    for id in word.split(',') {
        let id = id.trim();
        if id.is_empty() {
            continue; // `3,`: a list of one numeric id
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(bad("ids are letters, digits, '-', '_', '.' or ':'"));
        }
        if ids.iter().any(|known| known == id) {
            return Err(bad("an id is listed twice"));
        }
        ids.push(id.to_string());
    }
    if ids.is_empty() {
        return Err(bad("an empty list"));
    }
    Ok(ids)
}

/// Parses a list of GPU ids: indices (`0,1,3`) or device UUIDs
/// (`GPU-…`, `MIG-…`), as `CUDA_VISIBLE_DEVICES` takes them.
pub(super) fn parse_gpu_ids(word: &str) -> Result<Vec<String>, ResourceError> {
    let bad = |reason| ResourceError::BadValue {
        flag: "--gpus",
        value: word.to_string(),
        reason,
    };
    let ids = parse_ids(word, bad)?;
    let gpu_id = |id: &String| {
        id.bytes().all(|b| b.is_ascii_digit()) || id.starts_with("GPU-") || id.starts_with("MIG-")
    };
    if ids.iter().all(gpu_id) {
        Ok(ids)
    } else {
        Err(bad("not auto, none, or GPU indices or UUIDs such as 0,1,3"))
    }
}

/// Splits `NAME=VALUE`, checking the name.
fn split_named(word: &str) -> Result<(&str, &str), ResourceError> {
    let bad = |reason| ResourceError::BadResource {
        value: word.to_string(),
        reason,
    };
    let (name, value) = word.split_once('=').ok_or_else(|| bad("not NAME=VALUE"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad("a name is letters, digits, '_' or '-'"));
    }
    if matches!(name, "cpus" | "gpus" | "mem") {
        return Err(bad("cpus, gpus and mem have flags of their own"));
    }
    Ok((name, value))
}

impl ResourceOffer {
    /// An offer from the worker's flags: `cpus` cores, `gpus` a list of ids
    /// or `none` (detection, `auto`, is the caller's: see
    /// [`detect_gpus`](super::detect_gpus)), `mem` a size, and `resources`
    /// each `NAME=LIST` (indexed, `licences=a,b`; a list of one number is
    /// written `NAME=3,`) or `NAME=AMOUNT` (summed, `scratch=100`).
    pub fn parse(
        cpus: u32,
        gpus: Option<&str>,
        mem: Option<&str>,
        resources: &[String],
    ) -> Result<Self, ResourceError> {
        let gpus = match gpus {
            None | Some("none") => Vec::new(),
            Some(list) => parse_gpu_ids(list)?,
        };
        let mem_bytes = mem.map(|m| parse_size("--mem", m)).transpose()?;
        let mut named = BTreeMap::new();
        for word in resources {
            let (name, value) = split_named(word)?;
            let bad = |reason| ResourceError::BadResource {
                value: word.clone(),
                reason,
            };
            let numeric =
                !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            let resource = if numeric {
                NamedResource::Sum(
                    parse_amount("--resource", value).map_err(|_| bad("not an amount"))?,
                )
            } else {
                NamedResource::List(parse_ids(value, bad)?)
            };
            if named.insert(name.to_string(), resource).is_some() {
                return Err(bad("the name is given twice"));
            }
        }
        Ok(ResourceOffer {
            cpus: cpus.max(1),
            gpus,
            mem_bytes,
            named,
        })
    }
}

impl ResourceRequest {
    /// A request from a job's flags: `cpus` whole cores (one at least),
    /// `gpus` whole devices or a fraction below one (`0.5`), `mem` a size,
    /// and `resources` each `NAME=AMOUNT`.
    pub fn parse(
        cpus: Option<&str>,
        gpus: Option<&str>,
        mem: Option<&str>,
        resources: &[String],
    ) -> Result<Self, ResourceError> {
        let cpus = match cpus {
            Some(word) => {
                let n = parse_count("--cpus", word)?;
                if n == 0 {
                    return Err(ResourceError::BadValue {
                        flag: "--cpus",
                        value: word.to_string(),
                        reason: "a task takes one core at least",
                    });
                }
                n
            }
            None => 1,
        };
        let gpus = match gpus {
            Some(word) => {
                let amount = parse_amount("--gpus", word)?;
                if amount > Amount::ONE && !amount.is_whole() {
                    return Err(ResourceError::BadValue {
                        flag: "--gpus",
                        value: word.to_string(),
                        reason: "more than one GPU is asked for in whole devices",
                    });
                }
                amount
            }
            None => Amount::ZERO,
        };
        let mem_bytes = mem
            .map(|m| parse_size("--mem", m))
            .transpose()?
            .unwrap_or(0);
        let mut named = BTreeMap::new();
        for word in resources {
            let (name, value) = split_named(word)?;
            let amount =
                parse_amount("--resource", value).map_err(|_| ResourceError::BadResource {
                    value: word.clone(),
                    reason: "a request is NAME=AMOUNT",
                })?;
            if amount == Amount::ZERO {
                continue;
            }
            if named.insert(name.to_string(), amount).is_some() {
                return Err(ResourceError::BadResource {
                    value: word.clone(),
                    reason: "the name is given twice",
                });
            }
        }
        Ok(ResourceRequest {
            cpus,
            gpus,
            mem_bytes,
            named,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_to_four_decimals() {
        assert_eq!(parse_amount("--gpus", "0.5"), Ok(Amount(5_000)));
        assert_eq!(parse_amount("--gpus", "2"), Ok(Amount(20_000)));
        assert_eq!(parse_amount("--gpus", "0.0001"), Ok(Amount(1)));
        assert_eq!(Amount(5_000).to_string(), "0.5");
        assert_eq!(Amount(12_500).to_string(), "1.25");
        assert_eq!(Amount(20_000).to_string(), "2");
        for bad in ["x", "", "-1", "1.", ".5", "0.00001", "1e3", "1,5"] {
            let e = parse_amount("--gpus", bad).expect_err(bad);
            assert!(e.to_string().starts_with(&format!("--gpus {bad:?}")), "{e}");
        }
    }

    #[test]
    fn sizes_are_powers_of_1024() {
        assert_eq!(parse_size("--mem", "4G"), Ok(4 << 30));
        assert_eq!(parse_size("--mem", "4g"), Ok(4 << 30));
        assert_eq!(parse_size("--mem", "512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("--mem", "1.5T"), Ok(3 << 39));
        assert_eq!(parse_size("--mem", "100"), Ok(100));
        assert_eq!(parse_size("--mem", "2KB"), Ok(2048));
        let e = parse_size("--mem", "4Q").expect_err("4Q");
        assert!(e.to_string().starts_with("--mem \"4Q\": not a size"), "{e}");
        for bad in ["", "G", "4GG", "x4", "4iB", "99999999999P"] {
            assert!(parse_size("--mem", bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(16 << 30), "16G");
        assert_eq!(format_size(3 << 29), "1.5G");
        assert_eq!(format_size(17), "17");
    }

    #[test]
    fn offers_parse_lists_and_amounts() {
        let offer = ResourceOffer::parse(
            8,
            Some("0,1,3"),
            Some("16G"),
            &[
                "licences=a,b".into(),
                "scratch=100".into(),
                "port=7,".into(),
            ],
        )
        .expect("offer");
        assert_eq!(offer.gpus, ["0", "1", "3"]);
        assert_eq!(offer.mem_bytes, Some(16 << 30));
        assert_eq!(
            offer.named["licences"],
            NamedResource::List(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            offer.named["scratch"],
            NamedResource::Sum(Amount::whole(100))
        );
        assert_eq!(offer.named["port"], NamedResource::List(vec!["7".into()]));
        assert_eq!(
            offer.describe(),
            "8 cpus, gpus 0,1,3, mem 16G, licences a,b, port 7, scratch 100"
        );
        assert!(ResourceOffer::parse(8, Some("none"), None, &[])
            .expect("none")
            .gpus
            .is_empty());
        for (gpus, resources, named) in [
            (Some("0,0"), vec![], "\"0,0\""),
            (Some("x y"), vec![], "\"x y\""),
            (Some("x"), vec![], "--gpus \"x\""),
            (None, vec!["licences".to_string()], "\"licences\""),
            (None, vec!["=3".to_string()], "\"=3\""),
            (None, vec!["gpus=3".to_string()], "\"gpus=3\""),
            (None, vec!["a=1".to_string(), "a=2".to_string()], "\"a=2\""),
        ] {
            let e = ResourceOffer::parse(1, gpus, None, &resources).expect_err(named);
            assert!(e.to_string().contains(named), "{e} should name {named}");
        }
    }

    #[test]
    fn requests_parse_with_errors_naming_the_word() {
        let request =
            ResourceRequest::parse(Some("2"), Some("0.5"), Some("4G"), &["licences=1".into()])
                .expect("request");
        assert_eq!(request.cpus, 2);
        assert_eq!(request.gpus, Amount(5_000));
        assert_eq!(request.mem_bytes, 4 << 30);
        assert_eq!(request.named["licences"], Amount::ONE);
        assert_eq!(request.describe(), "2 cpus, 0.5 gpus, mem 4G, licences 1");
        assert!(ResourceRequest::parse(None, None, None, &[])
            .expect("empty")
            .is_plain());
        /// --cpus, --gpus, --mem, --resource, and the word the error names.
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            &'a [&'a str],
            &'a str,
        );
        let cases: [Case; 6] = [
            (None, Some("x"), None, &[], "--gpus \"x\""),
            (None, Some("1.5"), None, &[], "--gpus \"1.5\""),
            (None, None, Some("4Q"), &[], "--mem \"4Q\""),
            (Some("0"), None, None, &[], "--cpus \"0\""),
            (Some("two"), None, None, &[], "--cpus \"two\""),
            (
                None,
                None,
                None,
                &["licences=a"],
                "--resource \"licences=a\"",
            ),
        ];
        for (cpus, gpus, mem, resources, named) in cases {
            let resources: Vec<String> = resources.iter().map(|s| s.to_string()).collect();
            let e = ResourceRequest::parse(cpus, gpus, mem, &resources).expect_err(named);
            assert!(e.to_string().starts_with(named), "{e} should name {named}");
        }
    }
}
