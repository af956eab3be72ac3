package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"
)

// runCommand runs an external client (e.g. smtp-source) against addr and
// times it. Its output is kept for the report.
func runCommand(ctx context.Context, line, addr string, rep *report) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	args := strings.Fields(strings.NewReplacer("{addr}", addr, "{host}", host, "{port}", port).Replace(line))
	if len(args) == 0 {
		return errors.New("-command is empty")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	rep.started = time.Now()
	err = cmd.Run()
	rep.finished = time.Now()
	rep.cmdOutput = out.String()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", args[0], err, tail(rep.cmdOutput, 2000))
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
