package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/waitfor"
)

// senderScript is a real third-party client (Python's smtplib) that sends
// as fast as it can from several threads and prints "OK <message-id>" only
// after the relay's 250. Connection failures (the relay was killed) are
// retried with a new message; such messages never got a 250 and are not
// counted.
const senderScript = `
import smtplib, sys, threading, time, os
host, port, threads, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
def worker(n):
    i = 0
    while not os.path.exists(stop):
        i += 1
        mid = "crash-%d-%d@e2e.test" % (n, i)
        msg = ("From: <relay@contoso.example>\r\nTo: <x@fabrikam.example>\r\nSubject: crash\r\nMessage-ID: <%s>\r\n\r\n" % mid + "body line\r\n" * 50).encode()
        try:
            s = smtplib.SMTP(host, port, timeout=10)
            s.sendmail("relay@contoso.example", ["x@fabrikam.example"], msg)
            with lock:
                print("OK", mid, flush=True)
            try:
                s.quit()
            except Exception:
                pass
        except Exception as e:
            time.sleep(0.02)
ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
`

// SIGKILL at random moments loses nothing that got a 250
// (docs/design.md#what-250-means). Senders keep sending through ten kill -9
// / restart cycles; at the end every acknowledged message is at Exchange at
// least once and corrupt/ is empty.
func TestE2ECrashLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 loop")
	}
	t.Parallel()
	py := requireTool(t, "python3")
	cloud := newCloud(t)
	spool := t.TempDir()
	// Pacing off: hundreds of messages, not Exchange's 30 a minute.
	env, smtpAddr, _ := relayEnv(t, cloud, spool, "O365RELAY_LOG_LEVEL=info", "O365RELAY_MAILBOX_RATE=0")
	host, port := hostPort(t, smtpAddr)

	p := startRelay(t, env, smtpAddr, "serve")
	stopFile := filepath.Join(t.TempDir(), "stop")
	sender := exec.Command(py, "-c", senderScript, host, port, "8", stopFile)
	stdout, err := sender.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sender.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		acked    = map[string]bool{}
		ackAdded waitfor.Changes
	)
	ackCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "OK "); ok {
				mu.Lock()
				acked[id] = true
				mu.Unlock()
				ackAdded.Notify()
			}
		}
	}()
	t.Cleanup(func() { _ = sender.Process.Kill() })

	const kills = 10
	for i := 0; i < kills; i++ {
		// The point is a kill at a random moment of the senders' traffic,
		// whatever the relay is doing: a random real delay, not a wait
		// for something (the only sleep of its kind in the tests).
		time.Sleep(time.Duration(150+rand.IntN(500)) * time.Millisecond)
		p.kill()
		p = startRelay(t, env, smtpAddr, "serve")
	}
	// The last relay takes mail too before the senders stop.
	n0 := ackCount()
	waitfor.On(t, &ackAdded, "a message acknowledged by the last relay", func() bool { return ackCount() > n0 })
	if err := os.WriteFile(stopFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := sender.Wait(); err != nil {
		t.Fatalf("sender: %v", err)
	}
	<-readDone
	n := ackCount()
	if n < 20 {
		t.Fatalf("only %d messages acknowledged; the test proves little", n)
	}

	// Every acknowledged message reaches Exchange at least once.
	midRe := regexp.MustCompile(`Message-ID: <([^>]+)>`)
	var got map[string]int
	// Polled: the imitation of Exchange counts messages, not IDs.
	waitfor.CheckWithin(t, 3*time.Minute, "every acknowledged message at Exchange", func() error {
		got = map[string]int{}
		for _, m := range cloud.Exchange.Messages() {
			if mm := midRe.FindSubmatch(m.Data); mm != nil {
				got[string(mm[1])]++
			}
		}
		var missing []string
		for id := range acked { // the reader is done: acked no longer changes
			if got[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d acknowledged messages not at Exchange, e.g. %v", len(missing), n, missing[:min(5, len(missing))])
		}
		return nil
	})
	dups := 0
	for _, c := range got {
		dups += c - 1
	}
	entries, err := os.ReadDir(filepath.Join(spool, "corrupt"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("corrupt/ holds %d files after SIGKILLs", len(entries))
	}
	t.Logf("%d kills; %d messages acknowledged, all delivered; %d duplicates; %d delivered without a 250 (cut off before the reply)",
		kills, n, dups, len(got)-n)
	p.stop()
}
