"""What lives on disk: atomic files and run folders, feature chunks, and the fit and figure caches."""
