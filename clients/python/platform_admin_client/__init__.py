"""platform-admin flags and configs answered in process."""
