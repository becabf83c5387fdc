//! A local stand-in for Scaleo's conv-click-id endpoint (helper "sandbox").
