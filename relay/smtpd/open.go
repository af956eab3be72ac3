package smtpd

// OpenConnections is the number of client connections being served now
// (refused ones are not counted), for the o365relay_smtp_connections_open
// gauge.
func (s *Server) OpenConnections() int {
	s.mu.Lock()
	caps := s.caps
	s.mu.Unlock()
	if caps == nil {
		return 0
	}
	caps.mu.Lock()
	defer caps.mu.Unlock()
	return caps.total
}
