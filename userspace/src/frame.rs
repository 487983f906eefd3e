//! Frame layouts shared by the classifier's userspace twin, the consumers and the generator.
