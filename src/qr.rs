//! A contact as a QR code made of text: half-block characters, two modules a character
//! vertically, so a contact URL's code (41–49 modules) fits an 80×24 terminal. Pure: text in,
//! lines out; the terminal monitor and `keysync keys qr` draw the same lines.

use qrcode::{Color, EcLevel, QrCode};

/// A QR code as lines of text: a light module is drawn (`█`, `▀`, `▄`), a dark one is not,
/// so on a terminal's dark background the code reads dark on light, as scanners expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrText {
    pub lines: Vec<String>,
    /// Modules across, quiet zone included: the width in characters.
    pub width: usize,
}

/// `text` as a QR code with `quiet` light modules around it (the standard asks for 4; phone
/// scanners read 1 against a terminal), at the lowest error correction, which gives the
/// smallest code: a screen is not a sticker that gets scratched.
pub fn qr_text(text: &str, quiet: usize) -> Result<QrText, qrcode::types::QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)?;
    let size = code.width();
    let colors = code.to_colors();
    let width = size + 2 * quiet;
    let light = |x: usize, y: usize| {
        if x < quiet || y < quiet || x >= size + quiet || y >= size + quiet {
            return true;
        }
        colors[(y - quiet) * size + (x - quiet)] == Color::Light
    };
    let lines = (0..width.div_ceil(2))
        .map(|row| {
            (0..width)
                .map(|x| {
                    let top = light(x, 2 * row);
                    // Below the last row of an odd height: the background.
                    let bottom = 2 * row + 1 >= width || light(x, 2 * row + 1);
                    match (top, bottom) {
                        (true, true) => '█',
                        (true, false) => '▀',
                        (false, true) => '▄',
                        (false, false) => ' ',
                    }
                })
                .collect()
        })
        .collect();
    Ok(QrText { lines, width })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_modules_a_line_and_the_quiet_zone_is_light() {
        let qr = qr_text("https://meshtastic.org/v/#CgQIARIA", 1).expect("encodes");
        // 34 bytes: version 3 at level L, 29 modules, and one on each side.
        assert_eq!(qr.width, 31);
        assert_eq!(qr.lines.len(), 16);
        assert!(qr.lines.iter().all(|l| l.chars().count() == 31));
        assert!(qr.lines[0].starts_with("█▀▀▀▀▀▀▀█"), "{}", qr.lines[0]);
        // The last line holds the last module row on top and the page below it.
        assert!(qr.lines[15].chars().all(|c| c == '█'));
    }

    #[test]
    fn a_text_too_long_for_any_qr_code_is_an_error() {
        assert!(qr_text(&"x".repeat(3000), 1).is_err());
    }
}
