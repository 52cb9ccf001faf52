//! `--label KEY=VALUE`: what `backup create` writes into a manifest and `backup prune` selects
//! by.

use std::collections::BTreeMap;

/// One `KEY=VALUE`, checked as a manifest checks its labels.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let label = BTreeMap::from([(key.to_owned(), value.to_owned())]);
    ir_repository::manifest::check_labels(&label).map_err(|e| e.to_string())?;
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::parse_label;

    #[test]
    fn labels_are_key_equals_value_with_checked_keys() {
        assert_eq!(
            parse_label("team=db=x"),
            Ok(("team".to_owned(), "db=x".to_owned()))
        );
        assert!(parse_label("team").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_label("a b=c").unwrap_err().contains("labels: key"));
        assert!(parse_label("=c").is_err());
    }
}
