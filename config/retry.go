package config

// The retry schedule between retry_min and retry_max: each delay is the
// previous one times RetryFactor, spread by ±RetryJitter so that messages
// deferred together do not come back together (retry_min's documentation
// says so). They are fixed, not settings; the daemon passes them to
// delivery with the two settings.
const (
	RetryFactor = 2.0
	RetryJitter = 0.2
)
