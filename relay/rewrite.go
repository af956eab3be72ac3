package relay

import (
	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/rewrite"
)

// rewriteMode maps a sender rule's rewrite setting, a config value, to what
// the listener checks at intake and delivery applies on the way out.
func rewriteMode(r config.Rewrite) rewrite.Mode {
	switch r {
	case config.RewriteEnvelope:
		return rewrite.Envelope
	case config.RewriteEnvelopeFrom:
		return rewrite.EnvelopeFrom
	}
	return rewrite.None
}
