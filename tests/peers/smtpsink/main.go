// Command smtpsink is a fast SMTP peer for the email throughput benchmark.
//
// On loopback the aiosmtpd peer (tests/peers/smtp.py) spends more CPU per message
// than the connector it serves, so it caps what the benchmark can show. This peer
// does the same bookkeeping in Go, so the loopback rows measure the worker instead.
// It speaks the same stdin/stdout protocol as "python -m tests.peers.smtp": one
// hello line {"port", "cafile"} once listening, then one JSON line per command:
// "stats" ({"received", "accepted", "sessions", "max_open_sessions", "copies"}),
// "reset" ({}), "quit" (or end of input) to stop.
//
// It takes the same flags the benchmark passes the Python peer for its rows:
//
//	smtp-sink [--tls none|starttls] [--auth user:password] [--ca] [--key ec|rsa]
//
// With --tls starttls it offers STARTTLS with a throwaway certificate for localhost
// and 127.0.0.1, made in memory (--ca: issued by a throwaway CA, which is then the
// cafile; otherwise self-signed). With --auth it offers AUTH PLAIN after STARTTLS and
// refuses MAIL before it. Every message is accepted; none of the Python peer's faults,
// delays or command counts exist here.
package main

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// keyHeader finds the idempotency-key digest the way the Python peer does: the first
// X-Stagecoach-Idempotency-Key line of the header block, its first word.
var keyHeader = regexp.MustCompile(`(?im)^X-Stagecoach-Idempotency-Key:[ \t]*(\S+)`)

// noKey is what json.dumps makes of the Python peer's None key: a message without
// the header is counted under "null".
const noKey = "null"

// stats is what the "stats" command reports; field names follow the Python peer.
type stats struct {
	Received        int            `json:"received"`
	Accepted        int            `json:"accepted"`
	Sessions        int            `json:"sessions"`
	MaxOpenSessions int            `json:"max_open_sessions"`
	Copies          map[string]int `json:"copies"`
}

type sink struct {
	mu     sync.Mutex
	stats  stats
	open   int
	user   string
	secret string
}

func newSink() *sink {
	s := &sink{}
	s.reset()
	return s
}

// reset forgets counts; sessions open now stay open and still count as open.
func (s *sink) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = stats{Copies: map[string]int{}}
}

func (s *sink) snapshot() stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.stats
	out.Copies = make(map[string]int, len(s.stats.Copies))
	for k, v := range s.stats.Copies {
		out.Copies[k] = v
	}
	return out
}

func (s *sink) opened() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Sessions++
	s.open++
	s.stats.MaxOpenSessions = max(s.stats.MaxOpenSessions, s.open)
}

func (s *sink) closed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open--
}

func (s *sink) took(message []byte) {
	head, _, _ := bytes.Cut(message, []byte("\r\n\r\n"))
	key := noKey
	if found := keyHeader.FindSubmatch(head); found != nil {
		key = string(found[1])
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Received++
	s.stats.Accepted++
	s.stats.Copies[key]++
}

// NewSession is called on each EHLO, including the one after STARTTLS, so sessions
// are counted by the listener (a TCP connection is one), not here.
func (s *sink) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &session{sink: s}, nil
}

type session struct {
	sink   *sink
	authed bool
	buf    bytes.Buffer
}

func (e *session) AuthMechanisms() []string {
	if e.sink.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (e *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain || e.sink.user == "" {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, user, password string) error {
		if (identity != "" && identity != user) || user != e.sink.user || password != e.sink.secret {
			return smtp.ErrAuthFailed
		}
		e.authed = true
		return nil
	}), nil
}

func (e *session) Mail(string, *smtp.MailOptions) error {
	if e.sink.user != "" && !e.authed {
		return smtp.ErrAuthRequired
	}
	return nil
}

func (e *session) Rcpt(string, *smtp.RcptOptions) error { return nil }

func (e *session) Data(r io.Reader) error {
	e.buf.Reset()
	if _, err := e.buf.ReadFrom(r); err != nil {
		return err
	}
	e.sink.took(e.buf.Bytes())
	return nil
}

func (e *session) Reset()        {}
func (e *session) Logout() error { return nil }

// countingListener counts each accepted connection as a session, open until closed.
type countingListener struct {
	net.Listener
	sink *sink
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.sink.opened()
	return &countedConn{Conn: c, sink: l.sink}, nil
}

type countedConn struct {
	net.Conn
	sink *sink
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(c.sink.closed)
	return c.Conn.Close()
}

// certificates makes a key pair for localhost and 127.0.0.1, issued by a throwaway CA
// (issuerCA) or self-signed, writes what a client must trust to dir, and returns the
// server's certificate and that file's path.
func certificates(dir, keyType string, issuerCA bool) (tls.Certificate, string, error) {
	newKey := func() (crypto.Signer, error) {
		if keyType == "rsa" {
			return rsa.GenerateKey(rand.Reader, 2048)
		}
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	now := time.Now()
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		return n
	}
	leafKey, err := newKey()
	if err != nil {
		return tls.Certificate{}, "", err
	}
	leaf := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	issuer, issuerKey := leaf, leafKey
	if issuerCA {
		if issuerKey, err = newKey(); err != nil {
			return tls.Certificate{}, "", err
		}
		issuer = &x509.Certificate{
			SerialNumber:          serial(),
			Subject:               pkix.Name{CommonName: "Stagecoach test CA"},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, issuer, leafKey.Public(), issuerKey)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	trusted := leafDER
	if issuerCA {
		if trusted, err = x509.CreateCertificate(rand.Reader, issuer, issuer, issuerKey.Public(), issuerKey); err != nil {
			return tls.Certificate{}, "", err
		}
	}
	cafile := filepath.Join(dir, "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: trusted})
	if err := os.WriteFile(cafile, pemBytes, 0o600); err != nil {
		return tls.Certificate{}, "", err
	}
	// Like the Python peer, the server sends its own certificate only, not the CA's.
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}, cafile, nil
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "smtp-sink:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader, out io.Writer) error {
	flags := flag.NewFlagSet("smtp-sink", flag.ContinueOnError)
	tlsMode := flags.String("tls", "none", "none or starttls")
	auth := flags.String("auth", "", "user:password to require (with --tls starttls)")
	issuerCA := flags.Bool("ca", false, "certificate issued by a throwaway CA")
	keyType := flags.String("key", "ec", "ec (P-256) or rsa (2048 bits)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *tlsMode != "none" && *tlsMode != "starttls" {
		return fmt.Errorf("--tls %q: only none and starttls are supported", *tlsMode)
	}
	if *keyType != "ec" && *keyType != "rsa" {
		return fmt.Errorf("--key %q: ec or rsa", *keyType)
	}
	sink := newSink()
	if *auth != "" {
		user, secret, ok := strings.Cut(*auth, ":")
		if !ok || *tlsMode != "starttls" {
			return errors.New("--auth needs user:password and --tls starttls")
		}
		sink.user, sink.secret = user, secret
	}

	server := smtp.NewServer(sink)
	server.Domain = "peer.stagecoach.test"
	server.ReadTimeout = 5 * time.Minute
	server.WriteTimeout = time.Minute
	// What aiosmtpd offers the Python peer's clients, so the connector's EHLO finds
	// the same extensions (PIPELINING comes with go-smtp).
	server.MaxMessageBytes = 32 << 20
	server.EnableSMTPUTF8 = true
	var cafile *string
	if *tlsMode == "starttls" {
		dir, err := os.MkdirTemp("", "stagecoach-smtp-sink-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cert, path, err := certificates(dir, *keyType, *issuerCA)
		if err != nil {
			return fmt.Errorf("making the test certificate: %w", err)
		}
		// Go picks the TLS 1.3 suite itself (AES-128-GCM here, where OpenSSL behind
		// aiosmtpd picks AES-256-GCM); on a few KB a message the difference is noise.
		server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		cafile = &path
	}

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(countingListener{Listener: listener, sink: sink}) }()
	defer server.Close()

	encoder := json.NewEncoder(out)
	port := listener.Addr().(*net.TCPAddr).Port
	if err := encoder.Encode(map[string]any{"port": port, "cafile": cafile}); err != nil {
		return err
	}
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		var reply any
		switch strings.TrimSpace(lines.Text()) {
		case "stats":
			reply = sink.snapshot()
		case "reset":
			sink.reset()
			reply = struct{}{}
		case "quit":
			return nil
		default:
			continue // the Python peer ignores unknown commands too
		}
		if err := encoder.Encode(reply); err != nil {
			return err
		}
		select {
		case err := <-served:
			return fmt.Errorf("the SMTP server stopped: %w", err)
		default:
		}
	}
	return lines.Err()
}
