package epoll

// HandedOver is how many connections s handed over to net/http.
func HandedOver(s *Server) int64 { return s.handed.Load() }

// FrontHandedOver is how many TLS connections s's front gave to net/http
// after their handshake instead of a loop.
func FrontHandedOver(s *Server) int64 { return s.front.handed.Load() }
