"""Everything a person reads: results.json/CSV, figures, report.html, the attention viewer, screenshots."""
