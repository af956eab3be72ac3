package main

import (
	"fmt"
	"strings"
)

// sendmail's exit codes (sysexits.h), which cron, PHP, mdadm and scripts
// read: 0 means the message was handed over.
const (
	exUsage       = 64 // command line usage error
	exDataErr     = 65 // the message was refused for its content
	exNoInput     = 66 // stdin could not be read
	exNoUser      = 67 // a recipient was refused or has no address
	exUnavailable = 69 // the relay refused for good (other 5xx)
	exSoftware    = 70 // a bug
	exTempFail    = 75 // try again later: the relay is not running, or said 4xx
	exNoPerm      = 77 // the sender was refused
	exConfig      = 78 // the configuration file is broken
)

// sendmailOpts is a parsed sendmail command line.
type sendmailOpts struct {
	extract    bool     // -t: recipients from To, Cc, Bcc
	ignoreDots bool     // -i, -oi: a line with a single dot does not end the message
	from       string   // -f, -r: envelope sender
	fullName   string   // -F: the sender's name for an added From: header
	eightBit   bool     // -B8BITMIME
	verbose    bool     // -v
	configFile string   // -C: the relay's YAML configuration
	aliasFile  string   // -oA, -O AliasFile=: /etc/aliases by default
	mode       string   // -b: m (deliver, the default), i (newaliases: nothing to do)
	recipients []string // the arguments after the options
}

// Options that take an argument, as sendmail's getopt string has them
// ("A:B:b:C:d:F:f:h:L:N:O:o:p:q:R:r:V:X:"); the rest are single letters that
// may be grouped (-ti).
const sendmailArgOpts = "ABbCdFfhLNOopqRrVX"

// parseSendmailArgs reads a sendmail command line as sendmail, Postfix and
// msmtp do: getopt-style options, grouped or not, an option's argument
// attached (-fuser@host, -oi) or separate (-f user@host), "--" ending the
// options, then recipients. Options that only tune Sendmail's own queue or
// logging (-o*, -O, -N, -R, -V, -X, -L, -h, -d, -q*, -p) are accepted and
// ignored, as Postfix ignores them.
func parseSendmailArgs(args []string) (sendmailOpts, error) {
	o := sendmailOpts{mode: "m"}
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		if strings.HasPrefix(a, "--") {
			return o, fmt.Errorf("unknown option %s (sendmail takes single-dash options: -t -i -f ADDRESS -F NAME)", a)
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			if !strings.ContainsRune(sendmailArgOpts, rune(c)) {
				switch c {
				case 't':
					o.extract = true
				case 'i':
					o.ignoreDots = true
				case 'v':
					o.verbose = true
				case 'm', 'n', 'e', 'G', 'I', 's', 'c', 'U':
					// sendmail: me too, no aliasing, error mode, gateway,
					// initialize alias db, save From lines, … : nothing for
					// a relay client to do.
				default:
					return o, fmt.Errorf("unknown option -%c", c)
				}
				continue
			}
			arg := a[j+1:]
			if arg == "" {
				if i+1 >= len(args) {
					return o, fmt.Errorf("option -%c needs an argument", c)
				}
				i++
				arg = args[i]
			}
			if err := o.setArg(c, arg); err != nil {
				return o, err
			}
			break
		}
	}
	o.recipients = append(o.recipients, args[i:]...)
	return o, nil
}

func (o *sendmailOpts) setArg(c byte, arg string) error {
	switch c {
	case 'f', 'r':
		o.from = arg
	case 'F':
		o.fullName = arg
	case 'B':
		o.eightBit = strings.EqualFold(arg, "8BITMIME")
	case 'C':
		o.configFile = arg
	case 'b':
		switch arg {
		case "m", "i":
			o.mode = arg
		case "s":
			return fmt.Errorf("-bs (SMTP on stdin) is not supported: talk SMTP to the relay's port instead")
		case "p":
			return fmt.Errorf("-bp (list the queue) is not supported: use o365relay queue list")
		default:
			return fmt.Errorf("-b%s is not supported (only -bm, the default)", arg)
		}
	case 'o':
		switch {
		case arg == "i":
			o.ignoreDots = true
		case strings.HasPrefix(arg, "A") && len(arg) > 1:
			o.aliasFile = arg[1:]
		}
		// -oem, -odb, -odi, -oQ…: Sendmail's error and delivery modes.
	case 'O':
		k, v, _ := strings.Cut(arg, "=")
		switch strings.ToLower(k) {
		case "aliasfile":
			o.aliasFile = v
		case "ignoredots":
			o.ignoreDots = v == "" || strings.EqualFold(v, "true")
		}
	}
	return nil
}
