// Package reliability holds the tests of busway's promises that span every
// transport and the whole stack (bus, middleware, transports, URLs): that
// credentials never show in any output, and the other checks of the
// reliability suite that do not belong to one transport. It has no API.
package reliability
