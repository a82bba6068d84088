// Package tlsfiles builds a *tls.Config from PEM files named in a
// transport URL (tls_ca, tls_cert, tls_key), for the nats and kafka
// openers.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxPEM bounds what Load reads of one file: a URL may name any path
// (/dev/zero), and certificates are a few KiB.
const maxPEM = 1 << 20

// Load returns a TLS 1.2+ config trusting the certificates in ca (the
// system roots when ""), presenting the key pair cert+key when given. On
// error it also returns the URL option at fault ("tls_ca", "tls_cert").
func Load(ca, cert, key string) (*tls.Config, string, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := readPEM(ca)
		if err != nil {
			return nil, "tls_ca", err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "tls_ca", fmt.Errorf("%s holds no PEM certificate", ca)
		}
		tc.RootCAs = pool
	}
	if (cert == "") != (key == "") {
		return nil, "tls_cert", fmt.Errorf("tls_cert and tls_key go together")
	}
	if cert != "" {
		certPEM, err := readPEM(cert)
		if err != nil {
			return nil, "tls_cert", err
		}
		keyPEM, err := readPEM(key)
		if err != nil {
			return nil, "tls_key", err
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, "tls_cert", fmt.Errorf("%s and %s: %v", cert, key, err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, "", nil
}

func readPEM(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPEM+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEM {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a PEM file", name, maxPEM)
	}
	return b, nil
}

// VerifyFailed reports whether err is the failure to verify a peer's
// certificate (untrusted authority, wrong host name, expired): a problem
// of credentials, not of reachability, which retrying does not fix.
func VerifyFailed(err error) bool {
	var (
		cve *tls.CertificateVerificationError
		uae x509.UnknownAuthorityError
		he  x509.HostnameError
		cie x509.CertificateInvalidError
	)
	if errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &he) || errors.As(err, &cie) {
		return true
	}
	// nats.go formats the handshake error with %v: only its text is left.
	s := err.Error()
	return strings.Contains(s, "tls: failed to verify certificate") || strings.Contains(s, "x509: certificate")
}
