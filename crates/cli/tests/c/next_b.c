int value(void) { return 41; }
