"""Pure translators between canonical events and each institution's wire format."""
