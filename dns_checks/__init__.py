"""DNS diagnostics for mail domains (MX, SPF, DKIM, DMARC, PTR, MTA-STS, TLS-RPT) with dnspython."""
