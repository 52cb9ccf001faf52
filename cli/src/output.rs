//! Output for people or programs, and errors on one line.

use clap::ValueEnum;

/// `--output`: for people or for programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> serde_json::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The error and its causes on one line, skipping causes an outer message already quotes (the
/// library's messages include their source).
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_skips_quoted_causes() {
        let inner = std::io::Error::other("connection refused");
        let outer = anyhow::Error::new(inner).context("reading instantrecovery demo/pg1");
        assert_eq!(
            one_line(outer.as_ref()),
            "reading instantrecovery demo/pg1: connection refused"
        );
        let quoting =
            anyhow::anyhow!("open: connection refused").context("open: connection refused");
        assert_eq!(one_line(quoting.as_ref()), "open: connection refused");
    }
}
