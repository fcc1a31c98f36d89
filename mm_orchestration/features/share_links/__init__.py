"""Share-link expiry: links past their expiry are expired and their owners told, once."""
