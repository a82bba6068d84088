package tlsfiles

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLoad: each bad file is an error naming the option at fault, and a
// file that is not regular (/dev/zero) or too large is refused without
// reading it all.
func TestLoad(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(big, make([]byte, maxPEM+10), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ ca, cert, key, opt, says string }{
		{ca: filepath.Join(dir, "missing"), opt: "tls_ca", says: "no such file"},
		{ca: notPEM, opt: "tls_ca", says: "no PEM certificate"},
		{ca: "/dev/zero", opt: "tls_ca", says: "not a regular file"},
		{ca: big, opt: "tls_ca", says: "larger than"},
		{cert: notPEM, opt: "tls_cert", says: "go together"},
		{cert: notPEM, key: notPEM, opt: "tls_cert", says: "not.pem"},
	} {
		_, opt, err := Load(c.ca, c.cert, c.key)
		if err == nil || opt != c.opt || !strings.Contains(err.Error(), c.says) {
			t.Errorf("Load(%q, %q, %q) = %q, %v; want %s and an error saying %q", c.ca, c.cert, c.key, opt, err, c.opt, c.says)
		}
	}
	if tc, _, err := Load("", "", ""); err != nil || tc.RootCAs != nil || tc.MinVersion == 0 {
		t.Errorf("Load with no files: %+v, %v", tc, err)
	}
}

func TestVerifyFailed(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("dial: %w", x509.UnknownAuthorityError{}), true},
		{errors.New("nats: tls error: tls: failed to verify certificate: x509: certificate signed by unknown authority"), true},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false},
	} {
		if got := VerifyFailed(c.err); got != c.want {
			t.Errorf("VerifyFailed(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
