"""Where a page comes from: sources (paths, folders, globs, stdin) -> sniffing -> containers (mail, archives)
-> raster (PDF and image pages) and readable pages for e-invoice XML and e-mail bodies."""
