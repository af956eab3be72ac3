package smtpd

// OpenConnections is the number of client connections being served now
// (refused ones are not counted), for the o365relay_smtp_connections_open
// gauge.
func (s *Server) OpenConnections() int {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if ln == nil {
		return 0
	}
	ln.mu.Lock()
	defer ln.mu.Unlock()
	return ln.total
}
