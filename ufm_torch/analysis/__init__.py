"""Analysis of finished run and sweep folders: summary tables and figures, drawn from the files alone."""
