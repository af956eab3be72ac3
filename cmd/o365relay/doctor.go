package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/o365relay/o365relay/config/azurestep"
	"github.com/o365relay/o365relay/relay/doctor"
)

// runDoctor prints the setup checklist (relay/doctor) for the same
// configuration `serve` would run with. Exit 0 when no check failed
// (warnings pass), 1 when one did, 2 for bad flags.
func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("doctor", "doctor [--config FILE] [--json] [--SETTING VALUE ...]\n\n"+
		"Checks the setup in the order it is built — configuration and clock, certificate,\n"+
		"token, token claims, Exchange TLS, AUTH per mailbox, spool and listener, and what\n"+
		"a relay running on the spool reports — and prints ✔ / ✘ / ! per check; every ✘ names the Azure step and the fix with your\n"+
		"IDs filled in. Sends no mail. Exit 0 when no check failed.", stdout, stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON (same checks, for scripts)")
	var cfgErr bytes.Buffer
	cfg, _, code := loadCommand(fs, args, false, &cfgErr)
	var rep *doctor.Report
	if cfg == nil {
		msg := cfgErr.String()
		if code != 2 || !strings.HasPrefix(msg, "o365relay: configuration:") {
			_, _ = io.WriteString(stderr, msg) // help or a flag error
			return code
		}
		// A configuration that does not load is check 1 failing.
		rep = &doctor.Report{Checks: []doctor.Check{doctor.ConfigError(fmt.Errorf("%s", strings.TrimPrefix(msg, "o365relay: configuration:")))}}
	} else {
		rep = doctor.Run(ctx, doctor.Options{Config: cfg})
		if c, ok := daemonCheck(ctx, cfg.SpoolDir); ok {
			rep.Checks = append(rep.Checks, c)
			rep.OK = rep.OK && c.Status != doctor.Fail
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return exitErr(stderr, err)
		}
	} else {
		printReport(stdout, rep)
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// Marks of the checklist.
var marks = map[doctor.Status]string{doctor.OK: "✔", doctor.Fail: "✘", doctor.Warn: "!", doctor.Skip: "-"}

// printReport writes one line per check, "✘ 3 token: <message>", and under a
// failed or warned check its fix, indented, one command per line.
func printReport(w io.Writer, rep *doctor.Report) {
	var failed, warned int
	for _, c := range rep.Checks {
		label := c.Name
		if c.Target != "" && c.Name == "auth" {
			label += " " + c.Target
		}
		fmt.Fprintf(w, "%s %d %s: %s\n", marks[c.Status], c.Step, label, c.Message)
		switch c.Status {
		case doctor.Fail:
			failed++
		case doctor.Warn:
			warned++
		}
		if c.Fix == "" || (c.Status != doctor.Fail && c.Status != doctor.Warn) {
			continue
		}
		head := "fix"
		if len(c.AzureSteps) > 0 {
			head += " (" + azureSteps(c.AzureSteps) + ")"
		}
		fmt.Fprintf(w, "    %s:\n", head)
		for _, l := range strings.Split(c.Fix, "\n") {
			fmt.Fprintf(w, "      %s\n", l)
		}
	}
	switch {
	case failed > 0:
		fmt.Fprintf(w, "\n%d check(s) failed, %d warning(s). Fix the first ✘ first: later checks depend on earlier ones.\n", failed, warned)
	case warned > 0:
		fmt.Fprintf(w, "\nNo check failed; %d warning(s).\n", warned)
	default:
		fmt.Fprintln(w, "\nAll checks passed.")
	}
}

// azureSteps reads "Azure step 3" or "Azure steps 2, 5, 6" (config/azurestep).
func azureSteps(steps []int) string {
	s := make([]azurestep.Step, len(steps))
	for i, n := range steps {
		s[i] = azurestep.Step(n)
	}
	return azurestep.List(s...)
}
